"""Every message the actors exchange: frozen, slotted values (no rows, connections or exceptions).

An in-memory message is only a hint ("look now"); the durable mailbox is PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic nudge from the clock: do one bounded batch of periodic work."""


@dataclass(frozen=True, slots=True)
class Wake:
    """New work may be in the queue (NOTIFY arrived)."""


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run claimed under a lease, with the job settings its dispatch needs."""

    id: str
    job_id: str
    attempt: int
    payload: bytes
    lease_id: str
    expires_at: datetime | None
    previous_error: str | None
    endpoint_url: str
    timeout_secs: int
    max_attempts: int
    retry_strategy: str | None
    retry_delays_secs: tuple[int, ...] | None
    retry_priority_boost: int
    signing_secret: str | None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Poller -> DispatcherPool: call these runs' endpoints."""

    runs: tuple[ClaimedRun, ...]


@dataclass(frozen=True, slots=True)
class SlotsFreed:
    """DispatcherPool -> Poller: this many outcomes are committed; their slots are free."""

    count: int


@dataclass(frozen=True, slots=True)
class DispatcherReady:
    """DispatcherPool -> Poller: this many slots are free now (after a (re)start, or when asked)."""

    free: int


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
class Outcome:
    """What one dispatch attempt decided, ready for the fenced batch write."""

    run_id: str
    attempt: int
    lease_id: str
    to_status: str
    result: str | None  # JSON text
    error: str | None
    error_class: str | None
    retry_delay: float
    priority_boost: int


@dataclass(frozen=True, slots=True)
class ReportCapacity:
    """Poller -> DispatcherPool after the poller (re)starts: say how many slots are free."""


@dataclass(frozen=True, slots=True)
class LoopCrashed:
    """The dispatch loop hit a bug: the DispatcherPool raises it in its own thread to be restarted."""

    reason: str
