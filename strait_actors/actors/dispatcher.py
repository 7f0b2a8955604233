"""The DispatcherPool: HTTP calls to job endpoints, many in flight on one asyncio loop.

A LoopActor: the actor thread only hands messages to a private event loop, where the calls,
the lease heartbeats and the batched, fenced outcome writes run with one shared HTTP client,
so an endpoint that takes 200 ms costs a slot, not a thread. All of the state below is the
loop's; nothing reads it from another thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import psycopg

from strait_actors import metrics, outbound
from strait_actors.actors.base import TreeContext
from strait_actors.actors.loop import LoopActor
from strait_actors.breaker import REFRESH_SECS, Breakers
from strait_actors.fsm import S
from strait_actors.messages import Dispatch, DispatcherReady, ReportCapacity, SlotsFreed, Tick
from strait_actors.model import ClaimedRun, Outcome
from strait_actors.store import queue
from strait_actors.store.errors import Unavailable

log = logging.getLogger(__name__)

FLUSH_MAX = 500


class DispatcherPool(LoopActor):
    """Calls endpoints, heartbeats leases, writes outcomes in batches, and drains on stop."""

    name = "dispatcher"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        s = ctx.settings
        self.capacity = s.calls_in_flight
        # one shared client per loop: connection reuse is most of the speed; it holds nothing until used
        self.client = outbound.make_client(
            allow_private=s.allow_private_endpoints, calls=self.capacity, on_redial=metrics.DISPATCH_REDIALS.inc
        )
        self.inflight: dict[str, ClaimedRun] = {}
        self.calls: set[asyncio.Task[None]] = set()  # the endpoint calls among the tracked tasks
        self.pending: list[Outcome] = []
        self.took: list[float] = []  # HTTP call durations not yet counted (/metrics)
        self.began: dict[str, float] = {}  # run id -> when its call began, until its outcome is written
        self.flushing = False
        self.flush_task: asyncio.Task[None] | None = None
        self.draining = False
        self.db: psycopg.AsyncConnection | None = None
        self.db_lock = asyncio.Lock()  # one reconnect at a time: writes and heartbeats share the connection
        self.breakers = Breakers(s.circuit_breaker_threshold, s.circuit_breaker_cooldown_secs)

    def started(self) -> None:
        """Open the loop, then tell the poller: a (re)started pool has nothing in flight, and the
        poller's count of what it sent here is out of date (it asks: `SlotBook`)."""
        super().started()
        self.ctx.registry.tell("poller", DispatcherReady(self.capacity))

    # ------------------------------------------------------------ loop thread
    async def open(self) -> None:
        """Connect the outcome writer; keep the view of the shared circuits fresh."""
        self.db = await queue.connect_async(self.ctx.dsn)
        if self.breakers.threshold:
            self.spawn(self._watch_circuits())

    async def close(self) -> None:
        """Drop pooled endpoint connections and the database connection."""
        await self.client.close()
        if self.db is not None:
            await self.db.close()

    async def _connection(self) -> psycopg.AsyncConnection:
        """The outcome writer's connection, opened again if an outage closed it."""
        async with self.db_lock:
            if self.db is None or self.db.closed:
                self.db = await queue.connect_async(self.ctx.dsn)
            return self.db

    def handle(self, message: Any) -> None:
        """Runs to call, a heartbeat tick, or the poller asking how many slots are free."""
        if isinstance(message, Dispatch):
            self._start_calls(message.runs)
        elif isinstance(message, Tick):
            self.spawn(self._heartbeat())
        elif isinstance(message, ReportCapacity):
            self.ctx.registry.tell("poller", DispatcherReady(self.capacity - len(self.inflight), message.asked))

    def _start_calls(self, runs: tuple[ClaimedRun, ...]) -> None:
        for run in runs:
            self.inflight[run.id] = run
        if self.draining:  # claimed as we were stopping: straight back to the queue
            self.spawn(self._release(list(runs)))
            return
        for run in runs:
            call = self.spawn(self._call(run))
            self.calls.add(call)
            call.add_done_callback(self.calls.discard)

    async def _call(self, run: ClaimedRun) -> None:
        s = self.ctx.settings
        started = time.perf_counter()
        wait = self.breakers.hold_for(run.project_id, run.endpoint_url) if self.breakers.watching else 0.0
        if wait:  # the circuit is open: back to the queue until it half-opens, no attempt spent
            error = f"circuit open for this endpoint: waits {wait:.0f} s"
            outcome = Outcome(run.id, run.attempt, run.lease_id, S.QUEUED, None, error, "circuit_open", wait, 0)
        else:
            outcome = await outbound.call(
                self.client,
                run,
                jwt_key=s.jwt_signing_key,
                http_timeout_cap=s.executor_http_timeout_secs,
                max_response_bytes=s.max_response_bytes,
            )
            if self.breakers.record(run.project_id, run.endpoint_url, outcome):
                log.warning("circuit opened for %s: %s", run.endpoint_url, outcome.error)
            self.took.append(time.perf_counter() - started)
        self.began[run.id] = started
        self.pending.append(outcome)
        if not self.flushing:
            self.flushing = True
            self.flush_task = self.spawn(self._flush())

    async def _flush(self) -> None:
        """Write outcomes in batches: while one batch commits, the next one gathers."""
        try:
            while self.pending:
                batch = self.pending[:FLUSH_MAX]
                del self.pending[:FLUSH_MAX]
                await self._write(batch)
                self._count(batch)
                for o in batch:
                    self.inflight.pop(o.run_id, None)
                self.ctx.registry.tell("poller", SlotsFreed(len(batch), time.monotonic()))
                if self.breakers.deltas:
                    await self._write_circuits()
        finally:
            self.flushing = False

    def _count(self, batch: list[Outcome]) -> None:
        """The batch's figures for /metrics, added once per batch (`metrics.observe_many`)."""
        now, wall = time.perf_counter(), time.time()
        took, self.took = self.took, []
        metrics.observe_many(metrics.DISPATCH_DURATION, took)
        lived, ages, statuses, errors, retries = [], [], Counter[str](), Counter[str](), 0
        for o in batch:
            started = self.began.pop(o.run_id, None)
            if started is not None:
                lived.append(now - started)
            run = self.inflight.get(o.run_id)
            if run is not None and run.created_at is not None:
                ages.append(wall - run.created_at.timestamp())
            if o.error_class == "circuit_open":
                continue
            statuses[str(o.http_status) if o.http_status else "error"] += 1
            if o.error_class:
                errors[o.error_class] += 1
                retries += o.to_status == S.QUEUED
        metrics.observe_many(metrics.RUN_DURATION, lived)
        metrics.observe_many(metrics.RUN_END_TO_END, ages)
        for status, n in statuses.items():
            metrics.DISPATCH_STATUS.labels(status).inc(n)
        for error_class, n in errors.items():
            metrics.DISPATCH_ERRORS.labels(error_class).inc(n)
        if retries:
            metrics.RETRIES.inc(retries)

    async def _write(self, batch: list[Outcome]) -> None:
        """Write until the fence decides, retrying a lost database once a second.

        A late write is harmless (the fence drops it if the run moved on), and while the database
        is away no reaper takes these runs (reapers hold off for a lease after an outage), so
        giving up would only make every one of these runs a second time."""
        tries = 0
        while True:
            try:
                written = await queue.record_outcomes(await self._connection(), batch)
                if tries:
                    log.warning("%d outcome(s) written after %d failed tries", len(batch), tries)
                if len(written) < len(batch):
                    log.info("%d outcome(s) dropped: their runs moved on", len(batch) - len(written))
                return
            except Unavailable as exc:
                if not tries:
                    log.warning("outcome write failed (%s); retrying every second", exc)
                tries += 1
                await asyncio.sleep(min(0.1 * 2**tries, 1.0))

    async def _write_circuits(self) -> None:
        """Add the calls' failures and successes to the shared circuits (engine.md §3.4). The
        breaker is advice: a count lost to an outage is not retried."""
        deltas = self.breakers.take_deltas()
        s = self.ctx.settings
        try:
            opened = await queue.record_circuits(
                await self._connection(), deltas, s.circuit_breaker_threshold, s.circuit_breaker_cooldown_secs
            )
        except Unavailable as exc:
            log.warning("circuit counts not written: %s", exc)
            return
        self.breakers.opened(opened)

    async def _watch_circuits(self) -> None:
        """What every process counted, read once a second (engine.md §3.4: cached 1 s) off the call
        path: a circuit another process opened holds this one's runs within a second."""
        while True:
            try:
                self.breakers.read(await queue.read_circuits(await self._connection()))
            except Unavailable as exc:
                log.debug("circuits not read: %s", exc)
            await asyncio.sleep(REFRESH_SECS)

    async def _heartbeat(self) -> None:
        """Extend the leases in flight; after an outage this reconnects even when no outcome is due,
        or calls longer than the lease would lose their runs to the reaper and be made twice."""
        if not self.inflight:
            return
        pairs = [(r.id, r.lease_id) for r in self.inflight.values()]
        try:
            await queue.extend_leases(await self._connection(), pairs, self.ctx.settings.stale_threshold_secs)
        except Unavailable as exc:
            log.warning("lease heartbeat failed: %s", exc)

    async def _release(self, runs: list[ClaimedRun]) -> None:
        if not runs:
            return
        try:
            n = await queue.release_runs(await self._connection(), [(r.id, r.lease_id) for r in runs])
        except Unavailable as exc:  # their leases run out and the reaper takes them
            log.warning("could not release %d run(s): %s", len(runs), exc)
            return
        for r in runs:
            self.inflight.pop(r.id, None)
        log.info("released %d run(s) back to the queue", n)

    async def drain(self, grace: float) -> None:
        """Calls in flight get the grace period; the rest are cancelled and their runs released."""
        self.draining = True
        if self.calls:
            await asyncio.wait(set(self.calls), timeout=grace)
        calls = list(self.calls)
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if self.flush_task is not None:  # it takes every pending outcome with it
            await self.flush_task
        await self._release(list(self.inflight.values()))
