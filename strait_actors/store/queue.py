"""The queue as the worker sees it: claim under a lease, record outcomes fenced on it, reap."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from strait_actors.messages import ClaimedRun, Outcome
from strait_actors.store.sql import q

# Worker connections run only the queue's statements, whose right plan is always an index walk.
# On a young or fast-growing job_runs the planner's statistics lag far behind (autoanalyze runs
# once a minute at best) and it picks a bitmap scan + sort over every queued run: 10 ms per claim
# at 20k queued instead of 0.2 ms. These settings pin the index plans on these connections only.
PLAN_OPTIONS = "-c enable_seqscan=off -c enable_bitmapscan=off -c enable_sort=off"


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, options=PLAN_OPTIONS)


async def connect_async(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=PLAN_OPTIONS)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    runs: list[ClaimedRun]
    promoted: bool  # delayed runs became queued: claim again at once


class Queue:
    """Claims and lease upkeep over one synchronous connection (owned by the Poller)."""

    def __init__(self, conn: psycopg.Connection, *, worker_id: str, lease_secs: float) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.lease_secs = lease_secs

    def claim(self, limit: int) -> ClaimResult:
        lease = str(uuid.uuid4())
        rows = self.conn.execute(
            q("claim_runs"),
            {"limit": limit, "lease_id": lease, "lease_secs": self.lease_secs, "worker_id": self.worker_id},
        ).fetchall()
        promoted = bool(rows and rows[0][13])
        runs = [
            ClaimedRun(
                id=str(r[0]),
                job_id=str(r[1]),
                attempt=r[2],
                payload=r[3].encode(),
                lease_id=lease,
                expires_at=r[4],
                previous_error=r[5],
                endpoint_url=r[6] or "",
                timeout_secs=r[7],
                max_attempts=r[8],
                retry_strategy=r[9],
                retry_delays_secs=tuple(r[10]) if r[10] else None,
                retry_priority_boost=r[11],
                signing_secret=r[12],
            )
            for r in rows
            if r[0] is not None
        ]
        return ClaimResult(runs, promoted)


def _pairs(runs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    ids, leases = [], []
    for run_id, lease in runs:
        ids.append(run_id)
        leases.append(lease)
    return {"ids": ids, "leases": leases}


async def record_outcomes(conn: psycopg.AsyncConnection, outcomes: list[Outcome]) -> set[str]:
    """One statement for the whole batch; returns the ids whose fence held (the others are dropped)."""
    params = {
        "ids": [o.run_id for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "leases": [o.lease_id for o in outcomes],
        "statuses": [o.to_status for o in outcomes],
        "results": [o.result for o in outcomes],
        "errors": [o.error for o in outcomes],
        "classes": [o.error_class for o in outcomes],
        "delays": [o.retry_delay for o in outcomes],
        "boosts": [o.priority_boost for o in outcomes],
    }
    cur = await conn.execute(q("record_outcomes"), params)
    return {str(r[0]) for r in await cur.fetchall()}


async def extend_leases(conn: psycopg.AsyncConnection, runs: Iterable[tuple[str, str]], lease_secs: float) -> None:
    await conn.execute(q("extend_leases"), {**_pairs(runs), "lease_secs": lease_secs})


async def release_runs(conn: psycopg.AsyncConnection, runs: Iterable[tuple[str, str]]) -> int:
    cur = await conn.execute(q("release_runs"), _pairs(runs))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def reap_lost_leases(conn: psycopg.Connection) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in conn.execute(q("reap_lost_leases")).fetchall()}


def expire_runs(conn: psycopg.Connection) -> int:
    row = conn.execute(q("expire_runs")).fetchone()
    return int(row[0]) if row else 0
