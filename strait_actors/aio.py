"""The event loop strait runs on: uvloop where available (less CPU per HTTP call), else asyncio's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Pending(asyncio.Future[T]):
    """One caller's share of a statement that other callers share too. Until the statement is
    sent, a caller who gives up (cancellation, REQUEST_TIMEOUT) withdraws its share; once `sent`,
    the cancellation waits for the commit (`answer`) instead of answering "not done" about a write
    that may be made, and says so in the log (`late`). What `asyncio.shield` would do, without its
    second future and callback hop on every call."""

    sent = False  # set on the instance by the statement's sender
    late = "a caller gave up with its share of a statement in flight: answering the commit's decision"

    def cancel(self, msg: object = None) -> bool:
        if self.sent and not self.done():  # the task is told once this settles (answer)
            log.warning(self.late)
            return False
        return super().cancel(msg)


async def answer(pending: Pending[T]) -> T:
    """`pending`'s result; a caller cancelled after its share was sent gets the result of the
    commit it waited for (a cancelled share, or one never sent, stays a cancellation)."""
    try:
        return await pending
    except asyncio.CancelledError:
        if pending.done() and not pending.cancelled():
            return pending.result()
        raise


def kept(tasks: set[asyncio.Task[Any]], work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task of `work`, held in `tasks` while it runs: asyncio itself keeps only a weak reference
    to a task, which the collector may take before it ends."""
    task = asyncio.get_running_loop().create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
