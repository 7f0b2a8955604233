"""Per-endpoint circuit breakers of one worker process (engine.md §3.4).

`threshold` consecutive failed dispatches to an endpoint open its circuit for `cooldown` seconds:
runs claimed for it meanwhile are not called but put back in the queue until the circuit half-opens
(delayed, not failed: no attempt is spent). Half-open, one call goes through; its success closes the
circuit, its failure opens it for another cool-down. A failure is what says the endpoint is unwell:
a timeout, no connection, a 5xx or a 429; a 4xx about the request itself is not, and a run the
job's fallback endpoint completed counts as a success. Each worker process
keeps its own breakers (so with N processes up to N x threshold calls fail before all have opened).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from strait_actors.model import Outcome

UNWELL = frozenset({"transient", "connection", "server", "rate_limited"})


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    open_until: float = 0.0  # monotonic; 0 = closed
    probing: float = 0.0  # half-open: when the one call let through left (monotonic; 0 = none out)


class Breakers:
    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.circuits: dict[str, _Circuit] = {}

    def hold_for(self, url: str, now: float | None = None) -> float:
        """0 if a call to `url` may go now, else how many seconds its runs should wait."""
        c = self.circuits.get(url)
        if c is None or not c.open_until:
            return 0.0
        now = time.monotonic() if now is None else now
        if now < c.open_until:
            return c.open_until - now
        if c.probing and now - c.probing < self.cooldown:  # half-open, the probe still out: wait a moment
            return 1.0
        c.probing = now  # (a probe never answered for a whole cool-down is given up)
        return 0.0

    def record(self, url: str, outcome: Outcome, now: float | None = None) -> bool:
        """Count a call's outcome; True when it opened the circuit."""
        if not self.threshold:
            return False
        if outcome.error_class not in UNWELL:
            self.circuits.pop(url, None)  # an answer, even a 4xx: the endpoint is there
            return False
        c = self.circuits.setdefault(url, _Circuit())
        c.failures += 1
        if c.probing or c.failures >= self.threshold:
            was_closed = not c.open_until
            c.open_until = (time.monotonic() if now is None else now) + self.cooldown
            c.probing = 0.0
            c.failures = 0
            return was_closed
        return False
