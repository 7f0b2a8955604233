"""The run state machine (engine.md §1): one table of legal transitions.

Every status write in SQL is guarded by it: the transition seam (`store/transitions.py`) expands
each statement's declared edges into `WHERE status = ANY(<sources>)` from this table, and refuses
to load a statement whose edges are not here. Nothing else decides legality.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    DELAYED = "delayed"
    QUEUED = "queued"
    DEQUEUED = "dequeued"
    EXECUTING = "executing"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"
    SYSTEM_FAILED = "system_failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    DEAD_LETTER = "dead_letter"
    REPLAY_STAGED = "replay_staged"
    PAUSED = "paused"


S = RunStatus

TERMINAL: frozenset[str] = frozenset(
    {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CRASHED, S.SYSTEM_FAILED, S.CANCELED, S.EXPIRED, S.DEAD_LETTER}
)
ALL: frozenset[str] = frozenset(S)
ACTIVE: frozenset[str] = ALL - TERMINAL
# a run is created in one of these (a creation is not a transition: nothing to compare against); a
# new run of a job with dependencies is created waiting while one is unmet (engine.md §1.3)
INITIAL: frozenset[str] = frozenset({S.QUEUED, S.DELAYED, S.WAITING})
# ended without success: a replay makes a new run from one of these (api.md §4.4)
REPLAYABLE: frozenset[str] = frozenset({S.FAILED, S.TIMED_OUT, S.CRASHED, S.SYSTEM_FAILED})

# from -> allowed targets. waiting -> queued is a first-class edge (engine.md §1.2 ⚠). delayed -> waiting
# is ours: a delayed run of a job with dependencies that comes due with one unmet waits for it
# (migration 0012; engine.md §2.8 gates only the trigger, and would let a delayed run skip the gate).
TRANSITIONS: dict[str, frozenset[str]] = {
    S.DELAYED: frozenset({S.QUEUED, S.WAITING, S.CANCELED, S.EXPIRED}),
    S.QUEUED: frozenset({S.DEQUEUED, S.EXECUTING, S.CANCELED, S.EXPIRED}),
    S.DEQUEUED: frozenset({S.EXECUTING, S.QUEUED, S.CANCELED, S.SYSTEM_FAILED}),
    S.EXECUTING: frozenset(
        {
            S.COMPLETED,
            S.FAILED,
            S.TIMED_OUT,
            S.CRASHED,
            S.CANCELED,
            S.WAITING,
            S.QUEUED,
            S.SYSTEM_FAILED,
            S.DEAD_LETTER,
            S.PAUSED,
        }
    ),
    S.WAITING: frozenset({S.EXECUTING, S.COMPLETED, S.FAILED, S.CANCELED, S.TIMED_OUT, S.QUEUED}),
    S.DEAD_LETTER: frozenset({S.QUEUED, S.REPLAY_STAGED}),
    S.REPLAY_STAGED: frozenset({S.QUEUED, S.CANCELED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELED}),
}


def can(from_status: str, to_status: str) -> bool:
    return to_status in TRANSITIONS.get(from_status, frozenset())


def sources(to_status: str) -> list[str]:
    """Every status from which `to_status` is legal: the CAS set for a status UPDATE."""
    return sorted(f for f, targets in TRANSITIONS.items() if to_status in targets)


def is_terminal(status: str) -> bool:
    return status in TERMINAL
