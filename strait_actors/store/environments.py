"""Environments (migration 0007): a project's named variables. A job bound to one is dispatched to
its ENDPOINT_URL; every write here carries that onto the bound jobs (`jobs.endpoint_override`) in
the same transaction, so the claim reads it from the job row."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from strait_actors import ids
from strait_actors.store.errors import Duplicate, translated
from strait_actors.store.sql import Row, fetch_all, fetch_one, q


class NameTaken(Exception):
    """Another environment of the project has this name."""


class InUse(Exception):
    """Jobs are bound to the environment."""

    def __init__(self, jobs: int) -> None:
        super().__init__(f"{jobs} job(s) use the environment")
        self.jobs = jobs


async def insert(pool: AsyncConnectionPool, project_id: str, values: dict[str, Any]) -> Row:
    """Raises NameTaken, or MissingReference when the project does not exist."""
    params = {
        "id": ids.uuid7(),
        "project_id": project_id,
        "name": values["name"],
        "slug": values.get("slug"),
        "description": values.get("description"),
        "variables": Jsonb(values.get("variables") or {}),
    }
    try:
        row = await fetch_one(pool, "insert_environment", params)
    except Duplicate:
        raise NameTaken from None
    assert row is not None
    return row


async def get(pool: AsyncConnectionPool, env_id: uuid.UUID) -> Row | None:
    return await fetch_one(pool, "get_environment", {"id": env_id})


async def list_page(
    pool: AsyncConnectionPool, project_id: str, limit: int, after_ts: datetime | None, after_id: Any
) -> list[Row]:
    params = {"project_id": project_id, "limit": limit, "after_ts": after_ts, "after_id": after_id}
    return await fetch_all(pool, "list_environments", params)


async def update(pool: AsyncConnectionPool, current: Row, changes: dict[str, Any]) -> Row | None:
    """The environment with `changes`, and its jobs' endpoint override with it; None when it is gone."""
    merged = {k: current[k] for k in ("name", "slug", "description", "variables")} | changes
    params = {**merged, "id": current["id"], "variables": Jsonb(merged["variables"] or {})}
    with translated():
        async with pool.connection() as conn, conn.transaction():
            try:
                cur = await conn.execute(q("update_environment"), params)
            except psycopg.errors.UniqueViolation:
                raise NameTaken from None
            row: Any = await cur.fetchone()
            if row is not None:
                await conn.execute(q("sync_environment_jobs"), {"id": current["id"]})
    return row  # type: ignore[no-any-return]


async def delete(pool: AsyncConnectionPool, env_id: uuid.UUID) -> bool:
    """False when it is gone already; InUse while jobs are bound to it (checked under its lock)."""
    with translated():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(q("lock_environment"), {"id": env_id})
            row: Any = await cur.fetchone()
            if row is None:
                return False
            cur = await conn.execute(q("environment_jobs"), {"id": env_id, "project_id": row["project_id"]})
            used: Any = await cur.fetchone()
            if used["n"]:
                raise InUse(int(used["n"]))
            await conn.execute(q("delete_environment"), {"id": env_id})
    return True
