"""The Poller: claims due runs in batches sized to the dispatcher's free slots.

It wakes on NOTIFY (a listener thread), on the clock's fallback tick and, when it stopped for
want of free slots, whenever slots free up, so a backlog drains without waiting for a tick. A wake
whose cause (the NOTIFY's arrival, the outcome commit that freed slots) is older than the start of
a claim that then found nothing more to take is already answered: that claim's snapshot saw the
commit. Freed slots of a poller that was not short of them announce nothing a NOTIFY would not
(every write that makes runs claimable NOTIFYs), and a trigger's few runs wake one poller of the
program, not all (`wake_filter`): under a steady flow of single triggers this took the claims from
about 150 to about 50 per 1,000 runs, most of the rest having found nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from strait_actors import metrics
from strait_actors.actors.base import SupervisedActor, TreeContext
from strait_actors.messages import Dispatch, DispatcherReady, ReportCapacity, SlotsFreed, Tick, Wake
from strait_actors.processes import SLOT_ENV
from strait_actors.store import queue
from strait_actors.store.errors import StoreError, Unavailable
from strait_actors.store.queue import Queue

log = logging.getLogger(__name__)


def process_slot() -> tuple[int, int]:
    """(i, n): this worker process is the i-th of n (set by the process supervisor; 0 of 1 alone)."""
    i, _, n = os.environ.get(SLOT_ENV, "0/1").partition("/")
    try:
        slot, slots = int(i), int(n)
    except ValueError:
        return 0, 1
    return (slot, slots) if 0 <= slot < slots else (0, 1)


def wake_filter(slot: int, slots: int, share_from: int) -> Callable[[str, int], bool]:
    """Which NOTIFYs wake this poller. Every poller of the program LISTENs, and a NOTIFY reaches all
    of them, but a trigger's few runs fill one claim: the others would each claim nothing. So a wake
    that says how many runs it made claimable (a trigger's INSERT: its payload is the count) and
    names fewer than `share_from` is taken by one poller, the one whose slot the notifying backend's
    pid falls on; a bigger one, or one that does not say (a retry, a freed gate, a resume), wakes
    every poller. A run whose poller is short of slots or gone waits for that poller's next claim
    or another's clock tick (POLLER_INTERVAL_MS), never longer."""

    def wanted(payload: str, pid: int) -> bool:
        if slots == 1 or not payload.isdigit() or int(payload) >= share_from:
            return True
        return pid % slots == slot

    return wanted


def next_gap(took: int, wanted: int, most: float) -> float:
    """How long after a claim's start the claim for the next triggers' wake waits: 2 ms for each run
    this one took, at most `most` (CLAIM_COALESCE_MS), and nothing after a claim that took all it
    asked for (runs are waiting: the batch is as big as it gets). A claim costs PostgreSQL about as
    much for 1 run as for 50, so a steady flow of single triggers claimed a few runs at a time costs
    far more CPU than the same flow in larger claims. The wait follows the load: it grows while runs
    come faster than one every 2 ms to this worker process (500 runs/s) and shrinks when they come
    slower, so at idle or light load it is shorter than the claim itself; at 2,000 runs/s into two
    worker processes it settles at `most`. That is the latency it adds, and only under such load."""
    return 0.0 if took >= wanted else min(most, took * 0.002)


class Listener:
    """LISTEN on the wake channel in a thread of its own; reconnects with backoff. `on_notify` hears
    whether the wake was a trigger's (its payload counts the runs it queued) or any other kind."""

    def __init__(self, dsn: str, on_notify: Callable[[bool], None], wanted: Callable[[str, int], bool]) -> None:
        self.dsn = dsn
        self.on_notify = on_notify
        self.wanted = wanted
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
                        payload = listener.wait(0.5, self.wanted)
                        if payload is not None:
                            self.on_notify(payload.isdigit())
                finally:
                    listener.close()
            except StoreError as exc:
                log.warning("listener lost its connection (%s); retrying", exc)
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, 10.0)


ASK_AGAIN_SECS = 1.0


class SlotBook:
    """The poller's count of the runs in flight at the dispatcher, which only the dispatcher knows.

    The poller asks (ReportCapacity, numbered) and the dispatcher answers with its free slots. It
    reads the question in the order of the poller's messages, so its answer leaves out the runs
    sent after the question, still on their way: those are added back. Only the latest question's
    answer counts. A report nobody asked for (a (re)started dispatcher) is not a count: the poller
    asks then. (Taking every report as the count let an answer that arrived after the poller's
    first claims free their slots a second time: 2,000 calls at once for 1,000 allowed.) A question
    can be lost (sent while a restarted dispatcher was not registered yet): one still unanswered
    after ASK_AGAIN_SECS is asked again.
    """

    __slots__ = ("asked", "asked_at", "capacity", "inflight", "pending", "sent", "sent_when_asked")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inflight: int | None = None  # unknown until the first answer: no claims before it
        self.sent = 0  # runs sent to the dispatcher, in all
        self.asked = 0  # the latest question's number
        self.sent_when_asked = 0
        self.asked_at = 0.0
        self.pending = False  # the latest question is not answered yet

    def ask(self, now: float) -> int:
        """A new question's number (to send in ReportCapacity)."""
        self.asked += 1
        self.sent_when_asked = self.sent
        self.asked_at, self.pending = now, True
        return self.asked

    def lost(self, now: float) -> bool:
        """Is the latest question unanswered for longer than an answer takes?"""
        return self.pending and now - self.asked_at >= ASK_AGAIN_SECS

    def answered(self, free: int, asked: int) -> bool:
        """Take the dispatcher's answer; False (and nothing changes) unless it is the latest question's."""
        if asked != self.asked:
            return False
        self.inflight = max(0, self.capacity - free + self.sent - self.sent_when_asked)
        self.pending = False
        return True

    def dispatched(self, count: int) -> None:
        self.sent += count
        if self.inflight is not None:
            self.inflight += count

    def freed(self, count: int) -> None:
        if self.inflight is not None:
            self.inflight = max(0, self.inflight - count)


class Poller(SupervisedActor):
    """Turns free dispatch slots into claims; knows how many runs are in flight."""

    name = "poller"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.batch = ctx.settings.max_dequeue_batch_size
        self.slots = SlotBook(ctx.settings.calls_in_flight)
        self.wake_pending = threading.Event()
        self.conn: psycopg.Connection | None = None
        self.queue: Queue | None = None
        self.listener: Listener | None = None
        self.down = False  # the database stopped answering; claims resume when it answers again
        self.notified_at = 0.0  # monotonic time the latest NOTIFY arrived (the listener thread sets it)
        self.drained_at = -1.0  # start of the latest fill that left nothing claimable behind
        # the latest fill stopped for want of free slots, not of runs: freed slots (SlotsFreed) claim
        # again; otherwise they have nothing to claim that a NOTIFY would not announce
        self.short = False
        # adaptive coalescing under load: the first claim of a fill waits until `gap` after the start of
        # the one before (`next_gap`); at idle it goes at once
        self.max_gap = ctx.settings.claim_coalesce_ms / 1000
        self.claimed_at = -1.0
        self.gap = 0.0
        self.hurry = threading.Event()  # a wake no claim may wait for arrived (the listener sets it)

    def started(self) -> None:
        """Connect, start listening for NOTIFY, and ask the dispatcher how many slots are free."""
        self._connect()
        self.listener = Listener(self.ctx.dsn, self._notified, wake_filter(*process_slot(), self.batch))
        self.listener.start()
        self._ask()

    def _ask(self) -> None:
        self.ctx.registry.tell("dispatcher", ReportCapacity(self.slots.ask(time.monotonic())))

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

    def _notified(self, trigger: bool) -> None:
        if not trigger:  # a freed gate, a retry, a resume: no claim waits for it (see `fill`)
            self.hurry.set()
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
            self.slots.freed(message.count)
            if not self.short or message.at < self.drained_at:
                return
        elif isinstance(message, DispatcherReady):
            if not message.asked:  # a (re)started dispatcher: ask it how many slots are free
                self._ask()
                return
            if not self.slots.answered(message.free, message.asked):
                return  # an answer to an older question
        elif not isinstance(message, Tick):
            return
        elif self.slots.lost(time.monotonic()):
            self._ask()
        try:
            self.fill(coalesce=isinstance(message, Wake))
        except Unavailable as exc:
            # an outage is expected, not a bug: dying for it would spend the supervisor's restart
            # budget (and its backoff) on every child at once; the next tick or wake reconnects
            self._lost(exc)

    def _lost(self, exc: Unavailable) -> None:
        self._drop()
        if not self.down:
            log.warning("database unavailable (%s); claiming again when it answers", exc)
        self.down = True

    def fill(self, coalesce: bool = False) -> None:
        """Claim until the slots are full or the queue has nothing due.

        A fill for triggers' wakes (`coalesce`) first waits out the gap the last claim asked for
        (`next_gap`), unless a wake of another kind arrives: a freed concurrency slot, a due retry or
        a resumed run is never held back, and neither is a claim for freed dispatch slots or the
        clock's fallback tick."""
        first = True
        while (inflight := self.slots.inflight) is not None:
            free = self.slots.capacity - inflight
            # under load, wait for a whole batch of free slots: fewer, larger claims
            self.short = free <= 0 or (free < self.batch and inflight > self.batch)
            if self.short:
                return
            if first:  # the claims that follow a full one go at once: runs are waiting
                first = False
                wait = self.claimed_at + self.gap - time.monotonic()
                if coalesce and wait > 0:
                    self.hurry.wait(wait)
            self.hurry.clear()  # this claim answers every wake before it
            want = min(free, self.batch)
            started = time.monotonic()
            result = self._claims().claim(want)
            self.claimed_at, self.gap = started, next_gap(len(result.runs), want, self.max_gap)
            metrics.CLAIM_DURATION.observe(time.monotonic() - started)
            metrics.CLAIM_BATCH.observe(len(result.runs))
            if self.down:
                log.info("database answers again: claiming")
                self.down = False
            if result.runs:
                self.slots.dispatched(len(result.runs))
                self.ctx.registry.tell("dispatcher", Dispatch(tuple(result.runs)))
            if len(result.runs) < want and not result.promoted:
                self.drained_at = started
                return
