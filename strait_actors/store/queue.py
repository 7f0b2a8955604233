"""The queue as the worker sees it: claim under a lease, record outcomes fenced on it, reap.

Every status change here is a transition of `queries.sql`, written through the transition seam.
Driver errors come out as `store.errors` types.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from operator import attrgetter, itemgetter
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row, tuple_row

from strait_actors.breaker import CircuitDelta
from strait_actors.model import ClaimedRun, Outcome
from strait_actors.store.errors import Rejected, translated
from strait_actors.store.sql import count, kept_cursor, q

log = logging.getLogger(__name__)

# Worker connections run only the queue's statements, whose right plan is always an index walk.
# On a young or fast-growing job_runs the planner's statistics lag far behind (autoanalyze runs
# once a minute at best) and it picks a bitmap scan + sort over every queued run: 10 ms per claim
# at 20k queued instead of 0.2 ms. These settings pin the index plans on these connections only.
# Those settings price what they switch off at 1e10, which puts many plans past jit_above_cost: JIT is
# off too (compiling the claim took 7 s on a server with LLVM; these statements run in milliseconds).
PLAN_OPTIONS = "-c enable_seqscan=off -c enable_bitmapscan=off -c enable_sort=off -c jit=off"
# The claim (one long statement with the concurrency gates' CTEs) costs ~6 ms to plan and ~0.5 ms to
# run when the queue is empty; its right plan does not depend on its parameters, so the Poller's
# connection plans it once (Queue.claim prepares it on its first run).
CLAIM_OPTIONS = PLAN_OPTIONS + " -c plan_cache_mode=force_generic_plan"
# The most runs one claim takes: claim_runs bounds its plan's estimates with this `LIMIT 1000`
# (MAX_DEQUEUE_BATCH_SIZE is validated to it).
CLAIM_MAX = 1000


def connect(dsn: str, *, claims: bool = False) -> psycopg.Connection:
    with translated():
        return psycopg.connect(dsn, autocommit=True, options=CLAIM_OPTIONS if claims else PLAN_OPTIONS)


async def connect_async(dsn: str) -> psycopg.AsyncConnection:
    with translated():
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=PLAN_OPTIONS)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    runs: list[ClaimedRun]
    promoted: bool  # claim again at once: runs were promoted or held back, or left for claim_runs


@dataclass(frozen=True, slots=True)
class _Columns:
    """Where the claim's columns are, by name: a getter of a ClaimedRun's fields in their order (its
    `created_at` is the claim's `claim_created_at`), and the id, the promoted count, the gated flag,
    the priority and the creation time. Rows come as tuples: a dict per row and a keyword call per
    run cost a tenth of the worker's CPU at a few thousand runs a second."""

    fields: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    id: int
    promoted: int
    gated: int
    priority: int
    created_at: int


@lru_cache(maxsize=8)
def _claim_columns(names: tuple[str, ...]) -> _Columns:
    at = {name: i for i, name in enumerate(names)}
    fields = ["claim_created_at" if f.name == "created_at" else f.name for f in dataclasses.fields(ClaimedRun)]
    return _Columns(
        itemgetter(*(at[f] for f in fields)),
        at["id"],
        at["promoted"],
        at["gated"],
        at["claim_priority"],
        at["claim_created_at"],
    )


class Queue:
    """Claims and lease upkeep over one synchronous connection (owned by the Poller).

    A claim is claim_runs_plain while the last one met no concurrency gate, no held run to release
    and no run its job's state holds back, else claim_runs (queries.sql); the first is claim_runs.
    """

    def __init__(self, conn: psycopg.Connection, *, worker_id: str, lease_secs: float) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.lease_secs = lease_secs
        self.gated = True  # the next claim is claim_runs

    def claim(self, limit: int) -> ClaimResult:
        params = {
            "limit": min(limit, CLAIM_MAX),
            "lease_id": uuid.uuid4(),
            "lease_secs": self.lease_secs,
            "worker_id": self.worker_id,
        }
        with translated():
            cur = kept_cursor(self.conn, query := q("claim_runs" if self.gated else "claim_runs_plain"), tuple_row)
            # prepared at once (psycopg would on the 5th run): each is planned in milliseconds, and
            # claim_runs may run seldom
            rows = cur.execute(query, params, prepare=True).fetchall()
            # the columns' names from the result itself (`description` builds a Column object for
            # each of the 24, and did so twice per claim)
            result = cur.pgresult
            assert result is not None
            names = tuple((result.fname(i) or b"").decode() for i in range(result.nfields))
        at = _claim_columns(names)
        self.gated = bool(rows[0][at.gated])  # the statement always answers a row
        # dispatch in the claim's order (priority, then age); the statement's joins do not keep it
        ordered = sorted(
            (r for r in rows if r[at.id] is not None), key=lambda r: (-(r[at.priority] or 0), r[at.created_at])
        )
        fields = at.fields
        return ClaimResult([ClaimedRun(*fields(r)) for r in ordered], bool(rows[0][at.promoted]))


# Every batch writer of job_runs locks its runs in id order, so that two never wait on each other
# in a cycle (tests/test_lock_order.py). The worker's writers get their arrays in id order: on the
# worker's connections (PLAN_OPTIONS) each can only be a nested loop over the array, probing the
# primary key, or a walk of the primary key itself, and either writes the runs in id order. (A
# run id is canonical lower-case text here, whose order is the uuid's.)


def _pairs(runs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    ids, leases = [], []
    for run_id, lease in sorted(runs):
        ids.append(run_id)
        leases.append(lease)
    return {"ids": ids, "leases": leases}


async def record_outcomes(conn: psycopg.AsyncConnection, outcomes: list[Outcome]) -> set[str]:
    """One statement for the whole batch; returns the ids whose fence held (the others are dropped).

    A dropped outcome whose call had parked its run (wait-for-event, spawn-await) closes that park
    in a second statement, which does a resume held while the call went on (migration 0016).
    """
    written, parked = await _write_outcomes(conn, outcomes)
    if parked:
        await close_parked_dispatches(conn, [o for o in outcomes if o.run_id in parked])
    return written


async def _write_outcomes(conn: psycopg.AsyncConnection, outcomes: list[Outcome]) -> tuple[set[str], set[str]]:
    """The outcomes written (their fence held) and the dropped ones whose call parked its run.

    A batch PostgreSQL refuses (one endpoint's answer it cannot hold) is split in halves until the
    refused outcome is alone; that one is written with its result kept as a JSON string of the
    text. So one hostile answer costs its neighbours a few statements, and strands nobody.
    """
    try:
        return await _record(conn, outcomes)
    except Rejected as exc:
        if len(outcomes) > 1:
            mid = len(outcomes) // 2
            w1, p1 = await _write_outcomes(conn, outcomes[:mid])
            w2, p2 = await _write_outcomes(conn, outcomes[mid:])
            return w1 | w2, p1 | p2
        log.warning("run %s: outcome refused by PostgreSQL (%s); storing its result as text", outcomes[0].run_id, exc)
    try:
        return await _record(conn, [_as_text(outcomes[0])])
    except Rejected:
        return await _record(conn, [_as_text(outcomes[0], keep_result=False)])


async def close_parked_dispatches(conn: psycopg.AsyncConnection, outcomes: list[Outcome]) -> int:
    """Close the parks of these returned calls (in id order: see _pairs); how many runs resumed."""
    params = _fences(sorted(outcomes, key=attrgetter("run_id")))
    with translated():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("close_parked_dispatches"), params)
            row = await cur.fetchone()
    return int(row["resumed"]) if row else 0


def _fences(outcomes: list[Outcome]) -> dict[str, list[Any]]:
    """The (id, attempt, lease) arrays a statement fences each run's write on, in the order given."""
    return {
        "ids": [o.run_id for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "leases": [o.lease_id for o in outcomes],
    }


def _as_text(o: Outcome, *, keep_result: bool = True) -> Outcome:
    """The outcome with only values PostgreSQL always holds: the result as a JSON string, no NULs."""
    result = orjson.dumps(o.result.replace("\x00", "")).decode() if keep_result and o.result is not None else None
    error = o.error.replace("\x00", "")[:4096] if o.error is not None else None
    if not keep_result and o.result is not None:
        error = (error + "; " if error else "") + "the endpoint's answer could not be stored"
    return replace(o, result=result, error=error)


async def _record(conn: psycopg.AsyncConnection, outcomes: list[Outcome]) -> tuple[set[str], set[str]]:
    outcomes = sorted(outcomes, key=attrgetter("run_id"))  # in id order: see _pairs
    params = {
        **_fences(outcomes),
        "statuses": [o.to_status for o in outcomes],
        "results": [o.result for o in outcomes],
        "errors": [o.error for o in outcomes],
        "classes": [o.error_class for o in outcomes],
        "delays": [o.retry_delay for o in outcomes],
        "boosts": [o.priority_boost for o in outcomes],
    }
    with translated():
        cur = kept_cursor(conn, query := q("record_outcomes"), tuple_row)
        await cur.execute(query, params)
        rows = await cur.fetchall()
    return {r for r, parked in rows if not parked}, {r for r, parked in rows if parked}


async def record_circuits(
    conn: psycopg.AsyncConnection, deltas: list[CircuitDelta], threshold: int, cooldown: float
) -> list[tuple[str, str, float]]:
    """Add a batch's failed and successful calls to the shared circuits; the ones open now."""
    params = {
        "projects": [d.project_id for d in deltas],
        "hashes": [d.url_hash for d in deltas],
        "failures": [d.failures for d in deltas],
        "ok": [d.ok for d in deltas],
        "threshold": threshold,
        "cooldown": cooldown,
    }
    with translated():
        async with conn.cursor() as cur:
            await cur.execute(q("record_circuits"), params)
            return [(p, h, float(t)) for p, h, t in await cur.fetchall()]


async def read_circuits(conn: psycopg.AsyncConnection) -> list[tuple[str, str, float | None]]:
    """Every shared circuit with failures counted: (project, URL hash, open until (epoch) or None)."""
    with translated():
        async with conn.cursor() as cur:
            await cur.execute(q("read_circuits"))
            return [(p, h, t) for p, h, t in await cur.fetchall()]


async def extend_leases(conn: psycopg.AsyncConnection, runs: Iterable[tuple[str, str]], lease_secs: float) -> None:
    with translated():
        await conn.execute(q("extend_leases"), {**_pairs(runs), "lease_secs": lease_secs})


async def release_runs(conn: psycopg.AsyncConnection, runs: Iterable[tuple[str, str]]) -> int:
    with translated():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q("release_runs"), _pairs(runs))
            row = await cur.fetchone()
    return int(row["released"]) if row else 0


def ping(conn: psycopg.Connection) -> None:
    """A round trip: does the database answer (and how fast)?"""
    with translated():
        conn.execute(q("ping"))


def reap_lost_leases(conn: psycopg.Connection) -> dict[str, int]:
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        return {r["status"]: int(r["n"]) for r in cur.execute(q("reap_lost_leases")).fetchall()}


def age_queued_runs(conn: psycopg.Connection, after_secs: float) -> int:
    """One pass of priority ageing; how many runs gained a step."""
    return count(conn, "age_queued_runs", {"after_secs": after_secs})


def release_resumed_runs(conn: psycopg.Connection, limit: int) -> tuple[int, bool]:
    """One batch of a resumed job's runs held as 'job' (migration 0020): (runs freed, whether a job
    was waiting for it)."""
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("release_resumed_runs"), {"limit": limit}).fetchone()
    return (int(row["n"]), bool(row["jobs"])) if row else (0, False)


def release_held_runs(conn: psycopg.Connection) -> int:
    """Runs held as 'job' whose job can run again go back to the claim index (a bounded backstop)."""
    return count(conn, "release_held_runs")


def expire_runs(conn: psycopg.Connection) -> int:
    return count(conn, "expire_runs")


class WakeListener:
    """LISTEN on the queue's wake channel, over a connection of its own."""

    def __init__(self, dsn: str) -> None:
        with translated():
            self.conn = psycopg.connect(dsn, autocommit=True)
            self.conn.execute(q("listen_wake"))

    def wait(self, timeout: float, wanted: Callable[[str, int], bool]) -> str | None:
        """The payload of a wake that `wanted(payload, notifying backend pid)` accepts, as soon as
        one arrives; None after one that it declines or after `timeout` seconds of silence."""
        with translated():
            for n in self.conn.notifies(timeout=timeout, stop_after=1):
                return n.payload if wanted(n.payload, n.pid) else None
        return None

    def close(self) -> None:
        self.conn.close()
