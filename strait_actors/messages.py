"""Every message the actors exchange: frozen, slotted values (no rows, connections or exceptions);
the domain records they carry live in `model.py`.

An in-memory message is only a hint ("look now"); the durable mailbox is PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from strait_actors.model import ClaimedRun


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic nudge from the clock: do one bounded batch of periodic work."""


@dataclass(frozen=True, slots=True)
class Wake:
    """New work may be in the queue (NOTIFY arrived)."""


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Poller -> DispatcherPool: call these runs' endpoints."""

    runs: tuple[ClaimedRun, ...]


@dataclass(frozen=True, slots=True)
class SlotsFreed:
    """DispatcherPool -> Poller: this many outcomes are committed; their slots are free (`at`: the
    monotonic time after the commit)."""

    count: int
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class DispatcherReady:
    """DispatcherPool -> Poller: `free` slots were free when it read the poller's ReportCapacity
    numbered `asked`. `asked` 0: the pool has just (re)started; the poller asks it again."""

    free: int
    asked: int = 0


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A supervised actor died; the supervisor decides on a restart."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class RestartChild:
    """Clock -> Supervisor, after the backoff: start the child again."""

    name: str


@dataclass(frozen=True, slots=True)
class ReportCapacity:
    """Poller -> DispatcherPool when either (re)starts: say how many slots are free, quoting `asked`."""

    asked: int


@dataclass(frozen=True, slots=True)
class LoopCrashed:
    """A LoopActor's event loop hit a bug: the actor raises it in its own thread to be restarted."""

    reason: str
