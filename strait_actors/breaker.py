"""Per-endpoint circuit breakers, shared by every worker process (engine.md §3.4, migration 0010).

`threshold` consecutive failed calls to an endpoint of a project open its circuit for `cooldown`
seconds: runs claimed for it meanwhile are not called but put back in the queue until the circuit
half-opens (delayed, not failed: no attempt is spent). A failure is what says the endpoint is
unwell: a timeout, no connection, a 5xx or a 429; a 4xx about the request itself is not, and a run
the job's fallback endpoint completed counts as a success. A circuit is per (project, endpoint
URL): one tenant's failing calls never hold another's runs.

The count is kept in `endpoint_circuits`, where each dispatcher adds its calls' failures and
successes with its outcome writes (only endpoints known to be failing cost a row; a healthy one
costs a set lookup per call), and it reads the table back once a second, off the call path: a
circuit another process opened holds this one's runs too. Locally each process also counts and opens at once, and
after the cool-down lets one call through (half-open) until it answers: its success closes the
circuit everywhere, its failure opens it again for another cool-down.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from strait_actors.model import Outcome

UNWELL = frozenset({"transient", "connection", "server", "rate_limited"})
REFRESH_SECS = 1.0  # how stale the shared view may get (engine.md §3.4: cached 1 s)

Key = tuple[str, str]  # (project id, sha256 hex of the endpoint URL)


def key(project_id: str, url: str) -> Key:
    return project_id, hashlib.sha256(url.encode()).hexdigest()


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    open_until: float = 0.0  # monotonic; 0 = closed
    probing: float = 0.0  # half-open: when the one call let through left (monotonic; 0 = none out)


@dataclass(frozen=True, slots=True)
class CircuitDelta:
    """What one outcome batch says about one endpoint: failed calls, and whether one succeeded."""

    project_id: str
    url_hash: str
    failures: int
    ok: bool


class Breakers:
    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.circuits: dict[Key, _Circuit] = {}  # this process's count and half-open probe
        self.shared: dict[Key, float] = {}  # circuits open in the table: until (epoch seconds)
        self.known: set[Key] = set()  # endpoints with a row in the table (failures counted somewhere)
        self.deltas: dict[Key, list[int]] = {}  # to write: [failures, succeeded]

    @property
    def watching(self) -> bool:
        """Whether any circuit is counting or open: when not, a call needs no check at all."""
        return bool(self.circuits or self.shared)

    def hold_for(self, project_id: str, url: str, now: float | None = None) -> float:
        """0 if a call to `url` may go now, else how many seconds its runs should wait."""
        k = key(project_id, url)
        now = time.monotonic() if now is None else now
        wait = self.shared.get(k, 0.0) - time.time()
        c = self.circuits.get(k)
        if c is not None and c.open_until:
            wait = max(wait, c.open_until - now)
        if wait > 0:
            return wait
        if c is None or not c.open_until:
            return 0.0
        if c.probing and now - c.probing < self.cooldown:  # half-open, the probe still out: wait a moment
            return 1.0
        c.probing = now  # (a probe never answered for a whole cool-down is given up)
        return 0.0

    def record(self, project_id: str, url: str, outcome: Outcome, now: float | None = None) -> bool:
        """Count a call's outcome; True when it opened this process's circuit."""
        if not self.threshold:
            return False
        if outcome.error_class not in UNWELL:  # an answer, even a 4xx: the endpoint is there
            if not (self.circuits or self.known or self.deltas):  # the healthy case: nothing to hash
                return False
            k = key(project_id, url)
            if self.circuits.pop(k, None) is not None or k in self.known or k in self.deltas:
                self.deltas.setdefault(k, [0, 0])[1] = 1
                self.shared.pop(k, None)
            return False
        k = key(project_id, url)
        self.deltas.setdefault(k, [0, 0])[0] += 1
        c = self.circuits.setdefault(k, _Circuit())
        c.failures += 1
        if c.probing or c.failures >= self.threshold:
            was_closed = not c.open_until
            c.open_until = (time.monotonic() if now is None else now) + self.cooldown
            c.probing = 0.0
            c.failures = 0
            return was_closed
        return False

    def take_deltas(self) -> list[CircuitDelta]:
        """The counts to write with the next outcome batch (a success wins over failures beside it)."""
        out = [CircuitDelta(p, h, 0 if ok else n, bool(ok)) for (p, h), (n, ok) in self.deltas.items()]
        self.deltas.clear()
        for d in out:
            if d.ok:
                self.known.discard((d.project_id, d.url_hash))
            else:
                self.known.add((d.project_id, d.url_hash))
        return out

    def opened(self, rows: list[tuple[str, str, float]]) -> None:
        """Circuits the table says are open after a write of ours."""
        for p, h, until in rows:
            self.shared[(p, h)] = until

    def read(self, rows: list[tuple[str, str, float | None]]) -> None:
        """The whole table, as read just now."""
        self.known = {(p, h) for p, h, _ in rows}
        now = time.time()  # a circuit past its cool-down holds nothing: calls need no check for it
        self.shared = {(p, h): until for p, h, until in rows if until is not None and until > now}
