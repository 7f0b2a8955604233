"""The Poller: claims due runs in batches sized to the dispatcher's free slots.

It wakes on NOTIFY (a listener thread), on the clock's fallback tick and whenever
slots free up, so a backlog drains without waiting for a tick. A wake whose cause (the NOTIFY's
arrival, the outcome commit that freed slots) is older than the start of a claim that then found
nothing more to take is already answered: that claim's snapshot saw the commit. Skipping it
halves the claims under a steady flow, where every outcome write sends both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from strait_actors import metrics
from strait_actors.actors.base import SupervisedActor, TreeContext
from strait_actors.messages import Dispatch, DispatcherReady, ReportCapacity, SlotsFreed, Tick, Wake
from strait_actors.store import queue
from strait_actors.store.errors import StoreError, Unavailable
from strait_actors.store.queue import Queue

log = logging.getLogger(__name__)


class Listener:
    """LISTEN on the wake channel in a thread of its own; reconnects with backoff."""

    def __init__(self, dsn: str, on_notify: Callable[[], None]) -> None:
        self.dsn = dsn
        self.on_notify = on_notify
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="strait-listen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.5
        while not self.stopped.is_set():
            try:
                listener = queue.WakeListener(self.dsn)
                try:
                    backoff = 0.5
                    while not self.stopped.is_set():
                        if listener.wait(0.5):
                            self.on_notify()
                finally:
                    listener.close()
            except StoreError as exc:
                log.warning("listener lost its connection (%s); retrying", exc)
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, 10.0)


class Poller(SupervisedActor):
    """Turns free dispatch slots into claims; knows how many runs are in flight."""

    name = "poller"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.capacity = ctx.settings.worker_concurrency
        self.batch = ctx.settings.max_dequeue_batch_size
        self.inflight: int | None = None  # unknown until the dispatcher reports
        self.wake_pending = threading.Event()
        self.conn: psycopg.Connection | None = None
        self.queue: Queue | None = None
        self.listener: Listener | None = None
        self.down = False  # the database stopped answering; claims resume when it answers again
        self.notified_at = 0.0  # monotonic time the latest NOTIFY arrived (the listener thread sets it)
        self.drained_at = -1.0  # start of the latest fill that left nothing claimable behind

    def started(self) -> None:
        """Connect, start listening for NOTIFY, and ask the dispatcher how many slots are free."""
        self._connect()
        self.listener = Listener(self.ctx.dsn, self._notified)
        self.listener.start()
        self.ctx.registry.tell("dispatcher", ReportCapacity())

    def _connect(self) -> Queue:
        self.conn = queue.connect(self.ctx.dsn, claims=True)
        self.queue = Queue(self.conn, worker_id=self.ctx.worker_id, lease_secs=self.ctx.settings.stale_threshold_secs)
        return self.queue

    def _claims(self) -> Queue:
        """The claim connection, opened again after an outage closed it."""
        if self.queue is None or self.queue.conn.closed:
            self._drop()
            return self._connect()
        return self.queue

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = self.queue = None

    def _notified(self) -> None:
        # coalesce a burst of NOTIFYs into one Wake in the mailbox
        self.notified_at = time.monotonic()
        if not self.wake_pending.is_set():
            self.wake_pending.set()
            self.actor_ref.tell(Wake())

    def cleanup(self) -> None:
        """Stop the listener thread and close the claim connection."""
        if self.listener is not None:
            self.listener.stop()
        if self.conn is not None:
            self.conn.close()

    def on_receive(self, message: Any) -> None:
        """Update the slot count from the dispatcher's reports, then claim (also on Wake and Tick)."""
        if isinstance(message, Wake):
            self.wake_pending.clear()
            if self.notified_at < self.drained_at:
                return
        elif isinstance(message, SlotsFreed):
            if self.inflight is not None:
                self.inflight = max(0, self.inflight - message.count)
            if message.at < self.drained_at:
                return
        elif isinstance(message, DispatcherReady):
            self.inflight = max(0, self.capacity - message.free)
        elif not isinstance(message, Tick):
            return
        try:
            self.fill()
        except Unavailable as exc:
            # an outage is expected, not a bug: dying for it would spend the supervisor's restart
            # budget (and its backoff) on every child at once; the next tick or wake reconnects
            self._lost(exc)

    def _lost(self, exc: Unavailable) -> None:
        self._drop()
        if not self.down:
            log.warning("database unavailable (%s); claiming again when it answers", exc)
        self.down = True

    def fill(self) -> None:
        """Claim until the slots are full or the queue has nothing due."""
        while self.inflight is not None:
            free = self.capacity - self.inflight
            if free <= 0:
                return
            # under load, wait for a whole batch of free slots: fewer, larger claims
            if free < self.batch and self.inflight > self.batch:
                return
            want = min(free, self.batch)
            started = time.monotonic()
            result = self._claims().claim(want)
            metrics.CLAIM_DURATION.observe(time.monotonic() - started)
            metrics.CLAIM_BATCH.observe(len(result.runs))
            if self.down:
                log.info("database answers again: claiming")
                self.down = False
            if result.runs:
                self.inflight += len(result.runs)
                self.ctx.registry.tell("dispatcher", Dispatch(tuple(result.runs)))
            if len(result.runs) < want and not result.promoted:
                self.drained_at = started
                return
