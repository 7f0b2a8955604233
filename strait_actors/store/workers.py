"""Worker processes' liveness (`worker_heartbeats`, migration 0013): written by each process's
Beacon on a timer, read by `GET /health/ready`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from strait_actors.store.errors import translated
from strait_actors.store.sql import Row, count, fetch_all, q

MAX_LISTED = 100  # worker processes a readiness report lists (the most recently seen)


@dataclass(frozen=True, slots=True)
class Beat:
    """One worker process as it reports itself."""

    worker_id: str
    hostname: str
    pid: int
    started_at: datetime
    actors: dict[str, str]  # actor name -> "alive" | "down"


def beat(conn: psycopg.Connection, b: Beat) -> None:
    with translated():
        conn.execute(
            q("worker_beat"),
            {
                "worker_id": b.worker_id,
                "hostname": b.hostname,
                "pid": b.pid,
                "started_at": b.started_at,
                "actors": Jsonb(b.actors),
            },
        )


def gone(conn: psycopg.Connection, worker_id: str) -> None:
    with translated():
        conn.execute(q("worker_gone"), {"worker_id": worker_id})


def purge(conn: psycopg.Connection) -> int:
    return count(conn, "purge_worker_beats")


async def beats(pool: AsyncConnectionPool, stale_secs: float) -> list[Row]:
    """The latest beats, `alive` when seen within `stale_secs`."""
    return await fetch_all(pool, "worker_beats", {"stale_secs": stale_secs, "limit": MAX_LISTED})


async def ready_count(dsn: str, worker_ids: list[str], stale_secs: float, timeout: float) -> int | None:
    """How many of `worker_ids` beat lately with every actor alive; None: no answer within `timeout`.
    A connection per call: it serves a health probe every few seconds, not a request path."""
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
            async with conn:
                cur = await conn.execute(q("workers_ready"), {"ids": worker_ids, "stale_secs": stale_secs})
                row = await cur.fetchone()
    except (psycopg.Error, OSError, TimeoutError):
        return None
    return int(row["n"]) if row else 0
