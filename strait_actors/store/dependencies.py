"""Dependencies between jobs (engine.md §2.8, migration 0009): the edges, and the runs that wait on them.

A run of a job with dependencies is created `waiting` when one is unmet (`store.enqueue`); the run
of an upstream job that ends releases it in its own statement (the transition seam); the Reaper's
backstop looks at waits that statement could not see, and fails those whose TTL ran out.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from strait_actors import ids
from strait_actors.store.errors import translated
from strait_actors.store.sql import Row, count, fetch_all, q


class Cycle(Exception):
    """The edge would make a job depend on itself, at some depth."""


class OtherProject(Exception):
    """The upstream job is missing or belongs to another project."""


class Exists(Exception):
    """The job already depends on that job."""


async def add(pool: AsyncConnectionPool, job: Row, depends_on: uuid.UUID, condition: str) -> Row:
    """A new edge job -> depends_on; both job rows are locked (id order) while the cycle is looked for."""
    with translated():
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(q("lock_jobs_for_dependency"), {"ids": sorted({job["id"], depends_on})})
            rows: Any = await cur.fetchall()
            upstream = next((r for r in rows if r["id"] == depends_on), None)
            if upstream is None or upstream["project_id"] != job["project_id"]:
                raise OtherProject
            cur = await conn.execute(q("dependency_would_cycle"), {"job_id": job["id"], "depends_on": depends_on})
            found: Any = await cur.fetchone()
            if found["cycle"]:
                raise Cycle
            params = {"id": ids.uuid7(), "job_id": job["id"], "depends_on": depends_on, "condition": condition}
            try:
                async with conn.transaction():  # a savepoint: the duplicate is ours to report
                    cur = await conn.execute(q("insert_dependency"), params)
            except psycopg.errors.UniqueViolation:
                raise Exists from None
            row: Any = await cur.fetchone()
            return row  # type: ignore[no-any-return]


async def remove(pool: AsyncConnectionPool, job_id: uuid.UUID, dep_id: uuid.UUID) -> bool:
    """Remove an edge (False: no such edge of this job); waits it held are looked at again."""
    with translated():
        async with pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(q("delete_dependency"), {"id": dep_id, "job_id": job_id})
                row: Any = await cur.fetchone()
            if not row["n"]:
                return False
            await conn.execute(q("release_dependency_waits"), {"limit": 1000})
    return True


async def list_of(pool: AsyncConnectionPool, job_id: uuid.UUID) -> list[Row]:
    return await fetch_all(pool, "list_dependencies", {"job_id": job_id})


async def status_of(pool: AsyncConnectionPool, run_id: uuid.UUID) -> list[Row]:
    return await fetch_all(pool, "dependency_status", {"id": run_id})


def release_waits(conn: psycopg.Connection, limit: int) -> int:
    """The Reaper's backstop: queue waiting runs whose dependencies are met; how many went."""
    return count(conn, "release_dependency_waits", {"limit": limit})


def fail_expired_waits(conn: psycopg.Connection, limit: int) -> int:
    """Waits whose run's TTL ran out end `failed`; how many."""
    return count(conn, "fail_expired_dependency_waits", {"limit": limit})
