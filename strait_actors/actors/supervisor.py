"""The Supervisor: starts the worker's actors, restarts one that dies (one-for-one).

Restarts back off exponentially with jitter; more than `max_restarts` within `window`
seconds means something is wrong beyond one actor, and the supervisor escalates: the
`failed` event is set and the process exits non-zero (its own supervisor restarts it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from strait_actors import metrics
from strait_actors.actors.base import TreeContext
from strait_actors.actors.clock import Clock
from strait_actors.messages import ChildFailed, RestartChild

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child; `start` returns its ref."""

    name: str
    start: Callable[[TreeContext], pykka.ActorRef[Any]]
    stop_timeout: float = 10.0


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff between restarts, and the restart intensity (restarts per window) that escalates."""

    base_delay: float = 0.2
    max_delay: float = 10.0
    max_restarts: int = 10
    window: float = 60.0

    def delay(self, recent: int) -> float:
        d = min(self.base_delay * 2 ** max(0, recent - 1), self.max_delay)
        return float(d * random.uniform(0.8, 1.2))


class Supervisor(pykka.ThreadingActor):
    """Owns the clock and the children of one worker process."""

    def __init__(
        self,
        ctx: TreeContext,
        clock: Clock,
        children: list[ChildSpec],
        policy: RestartPolicy | None = None,
        failed: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.ctx = ctx
        self.clock = clock
        self.specs = {c.name: c for c in children}
        self.order = [c.name for c in children]
        self.policy = policy or RestartPolicy()
        self.restarts: deque[float] = deque()
        self.failed = failed or threading.Event()
        self.stopping = False

    def on_start(self) -> None:
        """Start the children in order, then the clock that ticks them."""
        self.ctx.registry.put("supervisor", self.actor_ref)
        for name in self.order:
            metrics.ACTOR_RESTARTS.labels(name)  # every actor's series from the start, at 0
            self._start_child(name)
        self.clock.start()

    def _start_child(self, name: str) -> None:
        ref = self.specs[name].start(self.ctx)
        self.ctx.registry.put(name, ref)

    def on_receive(self, message: Any) -> None:
        """A child died (schedule its restart or escalate), or its backoff is over (start it)."""
        if isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, RestartChild) and not self.stopping and not self.failed.is_set():
            log.info("restarting %s", message.name)
            metrics.ACTOR_RESTARTS.labels(message.name).inc()
            self._start_child(message.name)

    def _child_failed(self, message: ChildFailed) -> None:
        self.ctx.registry.put(message.name, None)
        if self.stopping:
            return
        now = time.monotonic()
        self.restarts.append(now)
        while self.restarts and self.restarts[0] < now - self.policy.window:
            self.restarts.popleft()
        if len(self.restarts) > self.policy.max_restarts:
            log.critical("restart intensity exceeded (%d in %.0f s); giving up", len(self.restarts), self.policy.window)
            self.failed.set()
            return
        delay = self.policy.delay(len(self.restarts))
        log.warning("%s died (%s); restart in %.2f s", message.name, message.reason, delay)
        self.clock.after(delay, "supervisor", RestartChild(message.name))

    def on_stop(self) -> None:
        """Stop the clock, then the children in reverse start order."""
        self.stopping = True
        self.clock.stop()
        for name in reversed(self.order):
            ref = self.ctx.registry.get(name)
            if ref is None:
                continue
            try:
                ref.stop(block=True, timeout=self.specs[name].stop_timeout)
            except (pykka.ActorDeadError, pykka.Timeout):
                log.warning("%s did not stop cleanly", name)
            self.ctx.registry.put(name, None)
        self.ctx.registry.put("supervisor", None)
