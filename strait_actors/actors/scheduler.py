"""The Scheduler: fires cron ticks (engine.md §7.1). Each tick of the clock it arms jobs whose cron
has no next tick yet and fires the due ones, in bounded batches, from rows alone: nothing about a
schedule lives in memory, so a restart, or a second worker process, changes nothing. Of many
schedulers one takes each tick (a compare-and-set on the job's `next_fire_at`, in the statement
that inserts the run); a tick whose job is off, overlapping under `skip`, or over a limit is
skipped and counted. Between the clock's ticks it wakes once more, on time, for the earliest
armed tick (a timer, replaced each pass): a burst of ticks starts firing at its second, not up to a
clock interval late.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pykka
import redis

from strait_actors.actors.base import TreeContext
from strait_actors.actors.sweeper import SweepActor
from strait_actors.logs import run_fields
from strait_actors.messages import Tick
from strait_actors.ratelimits import SyncRedisRateLimits
from strait_actors.store import schedules

log = logging.getLogger(__name__)

REPORT_SECS = 60.0


class Scheduler(SweepActor):
    """Cron ticks from `jobs.next_fire_at`; safe in many processes."""

    name = "scheduler"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        # ticks this process fired / skipped by reason (the metrics endpoint will export these)
        self.fired = 0
        self.skipped: Counter[str] = Counter()
        self.cpu = 0.0  # thread CPU seconds spent in ticks since the last report
        self.report_at = time.monotonic() + REPORT_SECS
        self.reported = (0, 0)
        self.timer: threading.Timer | None = None  # the wake-up for the earliest armed tick
        # with REDIS_URL, ticks of rate-limited jobs count where the API's triggers count theirs
        url = ctx.settings.redis_url
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) if url else None
        self.redis = SyncRedisRateLimits(client) if client is not None else None

    def cleanup(self) -> None:
        """Drop the pending wake-up, then close the connection."""
        if self.timer is not None:
            self.timer.cancel()
        if self.redis is not None:
            self.redis.close()
        super().cleanup()

    def sweep(self) -> None:
        self.tick(datetime.now(UTC))

    def tick(self, now: datetime) -> None:
        cpu = time.thread_time()
        try:
            self._tick(now)
        finally:
            self.cpu += time.thread_time() - cpu
            if time.monotonic() >= self.report_at:
                self._log_summary()

    def _log_summary(self) -> None:
        """One line a minute when there was work: what fired, what was skipped, the CPU it took."""
        skipped = sum(self.skipped.values())
        fired, was_skipped = self.fired - self.reported[0], skipped - self.reported[1]
        if fired or was_skipped or self.cpu >= 0.1:  # a scheduler that lost every tick still spent CPU
            log.info(
                "scheduler: last %.0f s: %d tick(s) fired, %d skipped (%s); %.3f s CPU",
                REPORT_SECS + time.monotonic() - self.report_at,
                fired,
                was_skipped,
                ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none",
                self.cpu,
            )
        self.reported, self.cpu = (self.fired, skipped), 0.0
        self.report_at = time.monotonic() + REPORT_SECS

    def _tick(self, now: datetime) -> None:
        conn = self.connection()
        self.down = False
        while schedules.arm(conn) >= schedules.BATCH:
            pass
        while True:
            fired = schedules.fire_due(conn, now, self.redis)
            for f in fired:
                if f.skipped:
                    self.skipped[f.skipped] += 1
                    log.info("cron tick %s skipped: %s", f.fire_key, f.skipped, extra=run_fields(job_id=f.job_id))
                elif f.run_id:
                    self.fired += 1
            if len(fired) < schedules.BATCH:
                break
        self._wake_for(schedules.next_due(conn))

    def _tick_now(self) -> None:
        with contextlib.suppress(pykka.ActorDeadError):  # stopped while the timer ran out
            self.actor_ref.tell(Tick())

    def _wake_for(self, at: datetime | None) -> None:
        """A Tick just after `at` when the clock's next one would come later than that."""
        if at is None:
            return
        delay = (at - datetime.now(UTC)).total_seconds()
        if not 0 < delay < self.ctx.settings.scheduler_interval_secs:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = threading.Timer(delay + 0.001, self._tick_now)
        self.timer.daemon = True
        self.timer.start()
