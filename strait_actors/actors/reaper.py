"""The Reaper: runs whose worker died (lease expired) go back to the queue or end `crashed`;
runs never started whose TTL passed end `expired`; waits past their timeout end `timed_out`;
runs stale in `dequeued` go back to the queue; a waiting run whose wait was answered without
resuming it is resumed; runs waiting on job dependencies that are met go to the queue (the upstream
run's end releases them in its own statement; this catches what it could not see) and those whose
TTL ran out fail. One bounded batch of each per tick. The runs of a resumed job that its resume left
held (migration 0020) are freed in batches of RELEASE_BATCH, for up to RELEASE_SECS a tick. Every
HELD_BACKSTOP_SECS, runs held back as 'job' (migration 0005) whose job can run again are released,
in case a claim held them just after the job's update released the others. Every
AGEING_INTERVAL_SECS, runs queued longer than PRIORITY_AGEING_AFTER_SECS gain one priority step
(engine.md §2.4).

A lease that ran out while the database was gone (stopped, or stalled) says nothing about its
worker: no worker could extend it. So after the reaper has seen the database lost or stalled it
waits one lease (STALE_THRESHOLD_SECS) before it takes expired leases as dead workers again; by
then every live worker has reconnected and extended its leases or written its outcomes, and its
runs are not made a second time.
"""

from __future__ import annotations

import logging
import time

import psycopg

from strait_actors import metrics
from strait_actors.actors.base import TreeContext
from strait_actors.actors.sweeper import SweepActor
from strait_actors.store import dependencies, events, queue, retention

log = logging.getLogger(__name__)

HELD_BACKSTOP_SECS = 30.0
# A batch of 5,000 runs is about 0.1 s of PostgreSQL's time; a tick's second of them frees runs
# faster than a worker takes them, and leaves the tick's other sweeps their turn.
RELEASE_BATCH = 5000
RELEASE_SECS = 1.0
DEPENDENCY_BACKSTOP_BATCH = 1000
AGEING_INTERVAL_SECS = 60.0


class Reaper(SweepActor):
    """Sweeps for lost leases and expired runs; safe in many processes (SKIP LOCKED, fenced)."""

    name = "reaper"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.leases_trusted_at = 0.0  # monotonic time from which an expired lease means a dead worker
        self.purge_at = 0.0  # monotonic time of the next retention pass
        self.held_at = 0.0  # monotonic time of the next held-runs backstop
        self.age_at = 0.0  # monotonic time of the next priority ageing pass

    def sweep(self) -> None:
        s, conn = self.ctx.settings, self.connection()
        started = time.monotonic()
        queue.ping(conn)
        stalled = time.monotonic() - started > s.heartbeat_interval_secs
        if self.down or stalled:
            self.down = False
            self.leases_trusted_at = time.monotonic() + s.stale_threshold_secs
            why = "stalled" if stalled else "away"
            log.warning("the database was %s: lost leases are reaped again in %.0f s", why, s.stale_threshold_secs)
        if time.monotonic() >= self.leases_trusted_at:
            reaped = queue.reap_lost_leases(conn)
            if reaped:
                log.warning("lost leases: %s", reaped)
                metrics.LEASE_RESCUES.inc(sum(reaped.values()))
        expired = queue.expire_runs(conn)
        if expired:
            log.info("expired %d run(s)", expired)
        waits, runs = events.expire_waits(conn)
        if waits:
            log.info("%d wait(s) timed out, %d waiting run(s) with them", waits, runs)
        stale = events.requeue_stale_dequeued(conn, s.stale_threshold_secs)
        if stale:
            log.warning("%d run(s) stale in dequeued went back to the queue", stale)
        lost = events.resume_lost_waits(conn)
        if lost:
            log.warning("%d waiting run(s) whose wait was answered without resuming them: resumed", lost)
        released = dependencies.release_waits(conn, DEPENDENCY_BACKSTOP_BATCH)
        if released:
            log.info("%d run(s) waiting on job dependencies met by now: queued", released)
        gave_up = dependencies.fail_expired_waits(conn, DEPENDENCY_BACKSTOP_BATCH)
        if gave_up:
            log.info("%d run(s) whose job dependencies were not met before their TTL: failed", gave_up)
        self.release_resumed(conn)
        if time.monotonic() >= self.held_at:
            self.held_at = time.monotonic() + HELD_BACKSTOP_SECS
            held = queue.release_held_runs(conn)
            if held:
                log.warning("%d run(s) held back after their job could run again: released", held)
        if s.priority_ageing_after_secs > 0 and time.monotonic() >= self.age_at:
            self.age_at = time.monotonic() + AGEING_INTERVAL_SECS
            aged = queue.age_queued_runs(conn, s.priority_ageing_after_secs)
            if aged:
                log.info(
                    "priority ageing: %d run(s) queued over %.0f s gained a step", aged, s.priority_ageing_after_secs
                )
        if time.monotonic() >= self.purge_at:
            self.purge_at = time.monotonic() + s.retention_interval_secs
            self.purge(conn)

    def release_resumed(self, conn: psycopg.Connection) -> None:
        """Free resumed jobs' held runs, a batch at a time (each its own transaction), until none is
        left or RELEASE_SECS have gone."""
        until, freed = time.monotonic() + RELEASE_SECS, 0
        while True:
            n, found = queue.release_resumed_runs(conn, RELEASE_BATCH)
            freed += n
            if not found or time.monotonic() >= until:
                break
        if freed:
            log.info("%d run(s) of resumed jobs back in the queue", freed)

    def purge(self, conn: psycopg.Connection) -> None:
        """Retention: one bounded batch each of old runs, event triggers, rate-limit hits and circuits."""
        s = self.ctx.settings
        runs = retention.purge_runs(
            conn, s.run_retention_short_hours, s.run_retention_long_hours, s.retention_batch_size
        )
        triggers = retention.purge_event_triggers(conn, s.event_trigger_retention_hours, s.retention_batch_size)
        hits = retention.purge_rate_hits(conn, s.retention_batch_size)
        retention.purge_circuits(conn, s.retention_batch_size)
        if runs or triggers or hits:
            log.info("retention: deleted %d run(s), %d event trigger(s), %d rate-limit hit(s)", runs, triggers, hits)
