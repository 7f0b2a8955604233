"""The clock: one thread that sends Tick messages on schedules and delayed one-off messages.

Actors never sleep in a handler; periodic work arrives from here, one bounded batch a tick.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from strait_actors.actors.base import Registry


class Clock:
    """Sends `message` to the named actor every `interval` seconds, and one-offs via `after`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._heap: list[tuple[float, int, str, object, float]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="strait-clock", daemon=True)

    def every(self, interval: float, name: str, message: object) -> None:
        self._push(time.monotonic() + interval, name, message, interval)

    def after(self, delay: float, name: str, message: object) -> None:
        self._push(time.monotonic() + delay, name, message, 0.0)

    def _push(self, at: float, name: str, message: object, interval: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (at, next(self._seq), name, message, interval))
            self._cond.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _at, _seq, name, message, interval = heapq.heappop(self._heap)
                if interval:
                    heapq.heappush(self._heap, (time.monotonic() + interval, next(self._seq), name, message, interval))
            self.registry.tell(name, message)
