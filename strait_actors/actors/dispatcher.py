"""The DispatcherPool: HTTP calls to job endpoints, many in flight on one asyncio loop.

The actor thread only forwards messages; the calls, the lease heartbeats and the
batched, fenced outcome writes run on a private event loop with one shared aiohttp
session, so an endpoint that takes 200 ms costs a slot, not a thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import psycopg

from strait_actors import outbound
from strait_actors.actors.base import SupervisedActor, TreeContext
from strait_actors.aio import new_event_loop
from strait_actors.messages import (
    ClaimedRun,
    Dispatch,
    DispatcherReady,
    LoopCrashed,
    Outcome,
    ReportCapacity,
    SlotsFreed,
    Tick,
)
from strait_actors.store import queue

log = logging.getLogger(__name__)

FLUSH_MAX = 500


class DispatcherPool(SupervisedActor):
    """Owns the dispatch loop: calls, heartbeats, outcome batches, graceful drain."""

    name = "dispatcher"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        s = ctx.settings
        self.capacity = s.worker_concurrency
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.inflight: dict[str, ClaimedRun] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.calls: set[asyncio.Task[None]] = set()  # the endpoint calls among the tasks
        self.pending: list[Outcome] = []
        self.flushing = False
        self.flush_task: asyncio.Task[None] | None = None
        self.draining = False
        self.db: psycopg.AsyncConnection | None = None

    # ------------------------------------------------------------ actor thread
    def started(self) -> None:
        self.loop = new_event_loop()
        self.loop.set_exception_handler(self._loop_error)
        self.thread = threading.Thread(target=self.loop.run_forever, name="strait-dispatch", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=30)
        self.ctx.registry.tell("poller", DispatcherReady(self.capacity))

    def on_receive(self, message: Any) -> None:
        assert self.loop is not None
        if isinstance(message, Dispatch):
            self.loop.call_soon_threadsafe(self._start_calls, message.runs)
        elif isinstance(message, Tick):
            self.loop.call_soon_threadsafe(self._spawn, self._heartbeat())
        elif isinstance(message, ReportCapacity):
            self.ctx.registry.tell("poller", DispatcherReady(self.capacity - len(self.inflight)))
        elif isinstance(message, LoopCrashed):
            raise RuntimeError(f"dispatch loop crashed: {message.reason}")

    def on_stop(self) -> None:
        """Graceful: let calls in flight finish (bounded), give the rest back to the queue."""
        if self.loop is not None and self.loop.is_running():
            grace = self.ctx.settings.worker_drain_timeout_secs
            fut = asyncio.run_coroutine_threadsafe(self._drain(grace), self.loop)
            try:
                fut.result(timeout=grace + 15)
            except Exception:
                log.exception("drain did not finish")
        self.cleanup()

    def cleanup(self) -> None:
        loop, self.loop = self.loop, None
        if loop is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
            except Exception:
                log.exception("dispatch loop did not close cleanly")
            loop.call_soon_threadsafe(loop.stop)
        if self.thread is not None:
            self.thread.join(timeout=10)
        loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        log.error("dispatch loop error: %s", context.get("message"), exc_info=context.get("exception"))
        self.actor_ref.tell(LoopCrashed(str(context.get("exception") or context.get("message"))))

    # ------------------------------------------------------------ loop thread
    async def _open(self) -> None:
        s = self.ctx.settings
        self.client = outbound.make_client(allow_private=s.allow_private_endpoints)
        self.db = await queue.connect_async(self.ctx.dsn)

    async def _close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()
        if self.db is not None:
            await self.db.close()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _start_calls(self, runs: tuple[ClaimedRun, ...]) -> None:
        for run in runs:
            self.inflight[run.id] = run
        if self.draining:  # claimed as we were stopping: straight back to the queue
            self._spawn(self._release(list(runs)))
            return
        for run in runs:
            call = self._spawn(self._call(run))
            self.calls.add(call)
            call.add_done_callback(self.calls.discard)

    async def _call(self, run: ClaimedRun) -> None:
        s = self.ctx.settings
        outcome = await outbound.call(
            self.client,
            run,
            jwt_key=s.jwt_signing_key,
            http_timeout_cap=s.executor_http_timeout_secs,
            max_response_bytes=s.max_response_bytes,
        )
        self.pending.append(outcome)
        if not self.flushing:
            self.flushing = True
            self.flush_task = self._spawn(self._flush())

    async def _flush(self) -> None:
        """Write outcomes in batches: while one batch commits, the next one gathers."""
        try:
            while self.pending:
                batch = self.pending[:FLUSH_MAX]
                del self.pending[:FLUSH_MAX]
                await self._write(batch)
                for o in batch:
                    self.inflight.pop(o.run_id, None)
                self.ctx.registry.tell("poller", SlotsFreed(len(batch)))
        finally:
            self.flushing = False

    async def _write(self, batch: list[Outcome]) -> None:
        """Retry a lost database; past the lease the runs are reaped anyway and the fence drops us."""
        deadline = time.monotonic() + self.ctx.settings.stale_threshold_secs
        delay = 0.1
        while True:
            try:
                if self.db is None or self.db.closed:
                    self.db = await queue.connect_async(self.ctx.dsn)
                written = await queue.record_outcomes(self.db, batch)
                if len(written) < len(batch):
                    log.info("%d outcome(s) dropped: their runs moved on", len(batch) - len(written))
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    log.error("giving up on %d outcome(s): %s", len(batch), exc)
                    return
                log.warning("outcome write failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeat(self) -> None:
        if not self.inflight or self.db is None:
            return
        pairs = [(r.id, r.lease_id) for r in self.inflight.values()]
        try:
            await queue.extend_leases(self.db, pairs, self.ctx.settings.stale_threshold_secs)
        except psycopg.OperationalError as exc:
            log.warning("lease heartbeat failed: %s", exc)

    async def _release(self, runs: list[ClaimedRun]) -> None:
        if not runs or self.db is None:
            return
        n = await queue.release_runs(self.db, [(r.id, r.lease_id) for r in runs])
        for r in runs:
            self.inflight.pop(r.id, None)
        log.info("released %d run(s) back to the queue", n)

    async def _drain(self, grace: float) -> None:
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
