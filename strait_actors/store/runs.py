"""Runs as the API sees them: insert, read, list, cancel, replay, events (enqueueing: `enqueue.py`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from strait_actors import ids
from strait_actors.model import NewRun
from strait_actors.store.sql import Row, fetch_all, fetch_one, kept_cursor, q

_INSERT_FIELDS = (
    "id",
    "job_id",
    "project_id",
    "status",
    "priority",
    "payload",
    "payload_hash",
    "tags",
    "metadata",
    "triggered_by",
    "scheduled_at",
    "idempotency_key",
    "concurrency_key",
    "batch_id",
    "job_version",
    "job_version_id",
    "created_by",
    "debug_mode",
)


def insert_params(runs: list[NewRun]) -> dict[str, list[Any]]:
    params: dict[str, list[Any]] = {f: [getattr(r, f) for r in runs] for f in _INSERT_FIELDS}
    params["tags"] = [Jsonb(t) for t in params["tags"]]
    params["metadata"] = [Jsonb(m) for m in params["metadata"]]
    params["ttl"] = [r.ttl_secs for r in runs]
    return params


async def insert_runs(conn: Any, runs: list[NewRun]) -> dict[uuid.UUID, str]:
    """Enqueue in one statement; returns {id: status} of the rows inserted (key conflicts are absent).
    A batch without idempotency keys cannot conflict, and skips ON CONFLICT's per-row cost."""
    keyed = any(r.idempotency_key is not None for r in runs)
    cur = kept_cursor(conn, query := q("insert_runs" if keyed else "insert_runs_unkeyed"), dict_row)
    await cur.execute(query, insert_params(runs))
    return {r["id"]: r["status"] for r in await cur.fetchall()}


async def statuses_of(conn: Any, run_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    cur = await conn.execute(q("run_statuses"), {"ids": run_ids})
    return {r["id"]: r["status"] for r in await cur.fetchall()}


async def run_by_idempotency_key(conn: Any, job_id: uuid.UUID, key: str) -> Row | None:
    cur = await conn.execute(q("run_by_idempotency_key"), {"job_id": job_id, "key": key})
    row: Row | None = await cur.fetchone()
    return row


async def release_idempotency_key(conn: Any, run_id: uuid.UUID) -> None:
    await conn.execute(q("release_idempotency_key"), {"id": run_id})


async def get_run(pool: AsyncConnectionPool, run_id: uuid.UUID) -> Row | None:
    return await fetch_one(pool, "get_run", {"id": run_id})


async def list_runs(pool: AsyncConnectionPool, filters: dict[str, Any]) -> list[Row]:
    return await fetch_all(pool, "list_runs", filters)


async def list_dead_letter(
    pool: AsyncConnectionPool, project_id: str, limit: int, after_ts: datetime | None, after_id: Any
) -> list[Row]:
    return await fetch_all(
        pool, "list_dead_letter", {"project_id": project_id, "limit": limit, "after_ts": after_ts, "after_id": after_id}
    )


async def cancel_run(pool: AsyncConnectionPool, run_id: uuid.UUID, actor: str) -> Row | None:
    """The canceled run, or None when it was terminal (or vanished) at the time of the write."""
    return await fetch_one(pool, "cancel_run", {"id": run_id, "actor": actor})


async def dlq_replay(pool: AsyncConnectionPool, run_id: uuid.UUID, actor: str) -> Row | None:
    return await fetch_one(pool, "dlq_replay", {"ids": [run_id], "project_id": None, "limit": 1, "actor": actor})


async def replay_run(pool: AsyncConnectionPool, run_id: uuid.UUID, actor: str) -> Row | None:
    return await fetch_one(pool, "replay_run", {"id": run_id, "new_id": ids.uuid7(), "actor": actor or None})


async def list_events(
    pool: AsyncConnectionPool,
    run_id: uuid.UUID,
    *,
    level: str | None,
    type_: str | None,
    limit: int,
    after_ts: datetime | None,
    after_id: int | None,
) -> list[Row]:
    params = {
        "run_id": run_id,
        "level": level,
        "type": type_,
        "limit": limit,
        "after_ts": after_ts,
        "after_id": after_id,
    }
    return await fetch_all(pool, "list_run_events", params)


async def bulk_dlq_replay(
    pool: AsyncConnectionPool, project_id: str, run_ids: list[uuid.UUID] | None, limit: int, actor: str
) -> list[uuid.UUID]:
    rows = await fetch_all(
        pool, "dlq_replay", {"project_id": project_id, "ids": run_ids, "limit": limit, "actor": actor}
    )
    return [r["id"] for r in rows]
