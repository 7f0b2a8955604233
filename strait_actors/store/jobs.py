"""Jobs and their version snapshots."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from strait_actors import ids
from strait_actors.store.coherence import Cache, ConfigFeed
from strait_actors.store.errors import MissingReference, translated
from strait_actors.store.sql import Row, fetch_all, fetch_one, q

COLUMNS = (
    "name",
    "slug",
    "description",
    "group_id",
    "cron",
    "timezone",
    "execution_window_cron",
    "cron_overlap_policy",
    "payload_schema",
    "result_schema",
    "tags",
    "endpoint_url",
    "fallback_endpoint_url",
    "signing_secret",
    "webhook_url",
    "max_attempts",
    "timeout_secs",
    "max_concurrency",
    "max_concurrency_per_key",
    "rate_limit_max",
    "rate_limit_window_secs",
    "rate_limit_keys",
    "dedup_window_secs",
    "run_ttl_secs",
    "debounce_window_secs",
    "batch_window_secs",
    "batch_max_size",
    "retry_strategy",
    "retry_delays_secs",
    "retry_priority_boost",
    "poison_pill_threshold",
    "enabled",
    "environment_id",
    "default_run_metadata",
    "version_policy",
    "execution_mode",
    "queue_name",
)
_JSON = ("payload_schema", "result_schema", "tags", "default_run_metadata", "rate_limit_keys")
_DEFAULTS: dict[str, Any] = {
    "tags": {},
    "default_run_metadata": {},
    "rate_limit_keys": [],
    "cron_overlap_policy": "allow",
    "retry_priority_boost": 1,
    "enabled": True,
    "version_policy": "pin",
    "execution_mode": "http",
    "queue_name": "default",
}


class SlugTaken(Exception):
    """Another job of the project has this slug."""


class VersionConflict(Exception):
    """The job changed between read and write."""


def _params(values: dict[str, Any]) -> dict[str, Any]:
    out = {c: values.get(c, _DEFAULTS.get(c)) for c in COLUMNS}
    for c in _JSON:
        if out[c] is not None:
            out[c] = Jsonb(out[c])
    return out


class MissingEnvironment(Exception):
    """The job names an environment that is not one of its project's."""


class MissingGroup(Exception):
    """The job names a job group that is not one of its project's."""


async def _one(conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]) -> Any:
    cur = await conn.execute(q(name), params)
    return await cur.fetchone()


def _ref_id(value: Any) -> uuid.UUID | None:
    return ids.parse_uuid(value) if isinstance(value, str) else None


async def _bind_references(
    conn: psycopg.AsyncConnection[Any], project_id: str, params: dict[str, Any], current: Row | None
) -> None:
    """The job's environment and group, read under a share lock before the job row is written (an
    environment's write or a group's delete then waits for this job, or is seen by it). A new
    reference must name one of the project's; the environment's ENDPOINT_URL becomes the job's
    `endpoint_override`. A group the write keeps that is gone (deleted meanwhile: its delete unbinds
    its jobs) is dropped; other kept values that name nothing (stored before migration 0007) stay."""
    for column, statement, missing in (
        ("environment_id", "job_environment", MissingEnvironment),
        ("group_id", "job_group", MissingGroup),
    ):
        value = params[column]
        kept = current is not None and value == current[column]
        if value is None:
            if column == "environment_id":
                params["endpoint_override"] = None
            continue
        ref = _ref_id(value)
        row = None if ref is None else await _one(conn, statement, {"id": ref, "project_id": project_id})
        if row is None and not kept:
            raise missing
        if row is not None:
            params[column] = str(ref)
        elif column == "group_id" and ref is not None:
            params[column] = None
        if column == "environment_id":
            params["endpoint_override"] = None if row is None else row["endpoint_override"]


async def insert_job(pool: AsyncConnectionPool, project_id: str, values: dict[str, Any], actor: str) -> Row:
    """Raises MissingReference (no such project), MissingEnvironment, MissingGroup, SlugTaken. The
    project's pause is read under a share lock: a project pause waits for this job, then pauses it."""
    params = _params(values) | {
        "id": ids.uuid7(),
        "project_id": project_id,
        "version_id": ids.version_id(),
        "created_by": actor or None,
        "endpoint_override": None,
    }
    with translated():
        async with pool.connection() as conn, conn.transaction():
            project = await _one(conn, "job_project_state", {"project_id": project_id})
            if project is None:
                raise MissingReference("projects")
            params["project_paused"] = project["paused"]
            await _bind_references(conn, project_id, params, None)
            try:
                row = await _one(conn, "insert_job", params)
            except psycopg.errors.UniqueViolation:
                raise SlugTaken from None
    assert row is not None
    return row  # type: ignore[no-any-return]


async def update_job(
    pool: AsyncConnectionPool, current: Row, changes: dict[str, Any], actor: str, snapshot_of_current: dict[str, Any]
) -> Row:
    """New version = current + changes; the outgoing version is snapshotted in the same transaction."""
    merged = {c: current.get(c) for c in COLUMNS} | {k: v for k, v in changes.items() if k in COLUMNS}
    params = _params(merged) | {
        "id": current["id"],
        "version": current["version"],
        "version_id": ids.version_id(),
        "updated_by": actor or None,
        "backwards_compatible": bool(changes.get("backwards_compatible", False)),
        "endpoint_override": current.get("endpoint_override"),
    }
    snapshot = {
        "id": ids.uuid7(),
        "job_id": current["id"],
        "version": current["version"],
        "version_id": current["version_id"],
        "backwards_compatible": current["backwards_compatible"],
        "snapshot": Jsonb(snapshot_of_current),
    }
    with translated():
        async with pool.connection() as conn, conn.transaction():
            await _bind_references(conn, current["project_id"], params, current)
            try:
                cur = await conn.execute(q("update_job"), params)
            except psycopg.errors.UniqueViolation:
                raise SlugTaken from None
            row: Any = await cur.fetchone()
            if row is None:
                raise VersionConflict
            await conn.execute(q("insert_job_version"), snapshot)
            await conn.execute(q("sync_job_gates"), {"id": current["id"]})
    return row  # type: ignore[no-any-return]


async def set_paused(pool: AsyncConnectionPool, job_id: uuid.UUID, paused: bool, reason: str | None) -> Row | None:
    """Pause or resume; a resumed job's runs set aside while it was paused go back to the queue."""
    with translated():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(q("set_job_paused"), {"id": job_id, "paused": paused, "reason": reason})
            row: Any = await cur.fetchone()
            if row is not None and not paused:
                await conn.execute(q("sync_job_gates"), {"id": job_id})
    return row  # type: ignore[no-any-return]


async def get_job(pool: AsyncConnectionPool, job_id: uuid.UUID) -> Row | None:
    return await fetch_one(pool, "get_job", {"id": job_id})


async def list_jobs(
    pool: AsyncConnectionPool,
    project_id: str,
    *,
    slug: str | None,
    tag_key: str | None,
    tag_value: str | None,
    limit: int,
    after_ts: datetime | None,
    after_id: Any,
) -> list[Row]:
    return await fetch_all(
        pool,
        "list_jobs",
        {
            "project_id": project_id,
            "slug": slug,
            "tag_key": tag_key,
            "tag_value": tag_value,
            "limit": limit,
            "after_ts": after_ts,
            "after_id": after_id,
        },
    )


async def delete_job(pool: AsyncConnectionPool, job_id: uuid.UUID) -> bool:
    """False when the job still has live runs. The check and the delete share a transaction
    holding the job row, so a trigger cannot slip a run in between."""
    with translated():
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(q("lock_job"), {"id": job_id})
            cur = await conn.execute(q("job_has_active_runs"), {"id": job_id})
            active: Any = await cur.fetchone()
            if active is not None and next(iter(active.values())):
                return False
            await conn.execute(q("delete_job"), {"id": job_id})
        return True


async def list_versions(
    pool: AsyncConnectionPool, job_id: uuid.UUID, limit: int, after_version: int | None
) -> list[Row]:
    return await fetch_all(
        pool, "list_job_versions", {"job_id": job_id, "limit": limit, "after_version": after_version}
    )


async def get_version(pool: AsyncConnectionPool, job_id: uuid.UUID, version_id: str) -> Row | None:
    return await fetch_one(pool, "get_job_version", {"job_id": job_id, "version_id": version_id})


class JobCache:
    """Jobs read by the trigger path, kept until they change (`coherence`), else for a second: a
    trigger storm reads each job once, and so does a job triggered now and then.

    A change made through this process is seen at once (forget); through another, once its
    notification arrives (within a second if the feed cannot vouch for the copy).
    """

    TTL = 1.0

    def __init__(self, feed: ConfigFeed | None = None) -> None:
        self.rows: Cache[uuid.UUID, Row | None] = Cache(feed, "jobs", self.TTL, uuid.UUID)

    async def get(self, pool: AsyncConnectionPool, job_id: uuid.UUID) -> Row | None:
        return await self.rows.get(job_id, lambda: get_job(pool, job_id))

    def forget(self, job_id: uuid.UUID) -> None:
        self.rows.forget(job_id)

    def forget_all(self) -> None:
        """A change to many jobs at once (a project's pause): read them all again."""
        self.rows.clear()
