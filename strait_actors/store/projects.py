"""Projects and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from strait_actors.store.errors import translated
from strait_actors.store.sql import Row, fetch_all, fetch_one, q


async def upsert_project(pool: AsyncConnectionPool, pid: str, org_id: str, name: str) -> Row | None:
    """None when the id exists under another org."""
    return await fetch_one(pool, "upsert_project", {"id": pid, "org_id": org_id, "name": name})


async def get_project(pool: AsyncConnectionPool, pid: str) -> Row | None:
    return await fetch_one(pool, "get_project", {"id": pid})


async def list_projects(pool: AsyncConnectionPool, org_id: str) -> list[Row]:
    return await fetch_all(pool, "list_projects", {"org_id": org_id})


async def insert_api_key(pool: AsyncConnectionPool, values: dict[str, Any]) -> Row:
    row = await fetch_one(pool, "insert_api_key", values)
    assert row is not None
    return row


async def api_key_by_hash(pool: AsyncConnectionPool, digest: str) -> Row | None:
    return await fetch_one(pool, "api_key_by_hash", {"key_hash": digest})


async def list_api_keys(
    pool: AsyncConnectionPool, project_id: str, limit: int, after_ts: datetime | None, after_id: Any
) -> list[Row]:
    return await fetch_all(
        pool, "list_api_keys", {"project_id": project_id, "limit": limit, "after_ts": after_ts, "after_id": after_id}
    )


async def revoke_api_key(pool: AsyncConnectionPool, key_id: Any, project_id: str | None) -> Row | None:
    return await fetch_one(pool, "revoke_api_key", {"id": key_id, "project_id": project_id})


async def set_paused(pool: AsyncConnectionPool, pid: str, paused: bool, reason: str | None) -> Row | None:
    """Pause or resume a project, and carry it onto its jobs (`project_paused`, which the claim, the
    trigger path and the cron ticks read) in the same transaction; a resume puts the runs set aside
    while it was paused back in the queue. None when there is no such project."""
    with translated():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(q("set_project_paused"), {"id": pid, "paused": paused, "reason": reason})
            row: Any = await cur.fetchone()
            if row is None:
                return None
            cur = await conn.execute(q("sync_project_jobs"), {"id": pid, "paused": paused})
            rows: Any = await cur.fetchall()
            changed = [r["id"] for r in rows]
            if changed and not paused:
                await conn.execute(q("release_jobs_runs"), {"ids": changed})
    return row  # type: ignore[no-any-return]
