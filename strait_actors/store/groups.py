"""Job groups (migration 0007): a project's named sets of jobs, paused and resumed together."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from strait_actors import ids
from strait_actors.store.errors import Duplicate, translated
from strait_actors.store.sql import Row, fetch_all, fetch_one, q


class NameTaken(Exception):
    """Another group of the project has this name."""


async def insert(pool: AsyncConnectionPool, project_id: str, values: dict[str, Any]) -> Row:
    """Raises NameTaken, or MissingReference when the project does not exist."""
    params = {
        "id": ids.uuid7(),
        "project_id": project_id,
        "name": values["name"],
        "description": values.get("description"),
    }
    try:
        row = await fetch_one(pool, "insert_job_group", params)
    except Duplicate:
        raise NameTaken from None
    assert row is not None
    return row


async def get(pool: AsyncConnectionPool, group_id: uuid.UUID) -> Row | None:
    return await fetch_one(pool, "get_job_group", {"id": group_id})


async def list_page(
    pool: AsyncConnectionPool, project_id: str, limit: int, after_ts: datetime | None, after_id: Any
) -> list[Row]:
    params = {"project_id": project_id, "limit": limit, "after_ts": after_ts, "after_id": after_id}
    return await fetch_all(pool, "list_job_groups", params)


async def update(pool: AsyncConnectionPool, current: Row, changes: dict[str, Any]) -> Row | None:
    params = {k: current[k] for k in ("name", "description")} | changes | {"id": current["id"]}
    try:
        return await fetch_one(pool, "update_job_group", params)
    except Duplicate:
        raise NameTaken from None


async def delete(pool: AsyncConnectionPool, group_id: uuid.UUID) -> bool:
    """The group's jobs leave it (group_id NULL) in the transaction that deletes it; False when it
    is gone already. Its lock comes first: a job joining it meanwhile waits, then finds it gone."""
    with translated():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(q("lock_job_group"), {"id": group_id})
            row: Any = await cur.fetchone()
            if row is None:
                return False
            await conn.execute(q("unbind_group_jobs"), {"id": group_id, "project_id": row["project_id"]})
            await conn.execute(q("delete_job_group"), {"id": group_id})
    return True


async def list_jobs(
    pool: AsyncConnectionPool, group: Row, limit: int, after_ts: datetime | None, after_id: Any
) -> list[Row]:
    params = {
        "group_id": group["id"],
        "project_id": group["project_id"],
        "limit": limit,
        "after_ts": after_ts,
        "after_id": after_id,
    }
    return await fetch_all(pool, "list_group_jobs", params)


async def set_paused(pool: AsyncConnectionPool, group: Row, paused: bool, reason: str | None) -> list[uuid.UUID]:
    """Pause or resume every job of the group (those not so already, which come back); resumed
    jobs' runs set aside while they were paused go back to the queue in the same transaction."""
    params = {"id": group["id"], "project_id": group["project_id"], "paused": paused, "reason": reason}
    with translated():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(q("set_group_paused"), params)
            rows: Any = await cur.fetchall()
            changed = [r["id"] for r in rows]
            if changed and not paused:
                await conn.execute(q("release_jobs_runs"), {"ids": changed})
    return changed


async def stats(pool: AsyncConnectionPool, group: Row) -> Row:
    row = await fetch_one(pool, "group_stats", {"id": group["id"], "project_id": group["project_id"]})
    assert row is not None
    return row
