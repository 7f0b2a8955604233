"""REQUEST_TIMEOUT for every request of an API process on one timer.

`asyncio.timeout` schedules a timer per request and cancels it at the end: a heap push, a
cancelled handle and an object of its own for every call of the SDK plane and the trigger path,
about a twentieth of the event loop's time at a few thousand requests a second. Here a request
registers in an insertion-ordered table; every request has the same timeout, so that order is the
order of their deadlines, and one timer, set for the oldest request still running, cancels the
requests whose deadline passed. A request that times out sees `TimeoutError`, as under
`asyncio.timeout`, and a cancellation from elsewhere stays a cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class _Entry:
    __slots__ = ("cancelling", "due", "expired", "task")

    def __init__(self, task: asyncio.Task[object], due: float) -> None:
        self.task = task
        self.due = due
        self.cancelling = task.cancelling()
        self.expired = False


class Deadlines:
    """Runs calls under one timeout of `secs` seconds (`call`); one timer for all of them."""

    def __init__(self, secs: float) -> None:
        self.secs = secs
        self._live: dict[_Entry, None] = {}  # in order of registration, hence of deadline
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """`await fn()` in the current task; `TimeoutError` once `secs` have passed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a first call, or an app served again on another loop
            self._loop, self._timer = loop, None
        task = asyncio.current_task()
        assert task is not None
        entry = _Entry(task, loop.time() + self.secs)
        self._live[entry] = None
        if self._timer is None:
            self._timer = loop.call_at(entry.due, self._expire)
        try:
            result = await fn()
        except asyncio.CancelledError:
            if entry.expired and task.uncancel() <= entry.cancelling:
                raise TimeoutError from None
            raise
        else:
            if entry.expired:  # it ended before the cancellation reached it: take that back
                task.uncancel()
            return result
        finally:
            del self._live[entry]

    def _expire(self) -> None:
        assert self._loop is not None
        self._timer = None
        now = self._loop.time()
        for entry in self._live:
            if entry.due > now:
                self._timer = self._loop.call_at(entry.due, self._expire)
                return
            if not entry.expired:
                entry.expired = True
                entry.task.cancel()

    def pending(self) -> int:
        return len(self._live)
