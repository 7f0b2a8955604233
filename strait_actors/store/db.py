"""Connections and migrations.

Migrations are `migrations/NNNN_name.sql`, applied in order at start-up under an
advisory lock, so several processes starting at once apply each file exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from strait_actors.store.sql import q, released_on_cancel

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x5374726169744D67  # "StraitMg"


def migrations_dir() -> Path:
    packaged = Path(str(resources.files("strait_actors"))) / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "migrations"


def migration_files() -> list[Path]:
    return sorted(migrations_dir().glob("*.sql"))


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations; returns the names applied by this call."""
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(q("lock_migrations"), {"key": MIGRATION_LOCK})
        try:
            conn.execute(q("create_schema_migrations"))
            done = {r[0] for r in conn.execute(q("applied_migrations"))}
            for path in migration_files():
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text().encode())
                    conn.execute(q("record_migration"), {"name": path.name})
                applied.append(path.name)
                log.info("applied migration %s", path.name)
        finally:
            conn.execute(q("unlock_migrations"), {"key": MIGRATION_LOCK})
    return applied


@cache
def packaged_names() -> frozenset[str]:
    """The migration files this version carries (they do not change while it runs)."""
    return frozenset(p.name for p in migration_files())


@dataclass(frozen=True, slots=True)
class MigrationState:
    """The database's applied migrations against the packaged files."""

    applied: int
    pending: list[str]  # packaged, not applied: this version's schema is not there yet
    unknown: list[str]  # applied, not packaged: a newer version migrated this database


async def _applied(pool: AsyncConnectionPool, timeout: float) -> set[str]:
    async with pool.connection(timeout=timeout) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("applied_migrations"))
        return {r["name"] for r in await cur.fetchall()}


async def migration_state(pool: AsyncConnectionPool, timeout: float) -> MigrationState | None:
    """The applied set against the packaged files; None when the database does not answer within
    `timeout` (readiness: a frozen database is a down one)."""
    try:
        async with asyncio.timeout(timeout):
            done = await released_on_cancel(_applied(pool, timeout))
    except (psycopg.Error, PoolTimeout, OSError, TimeoutError):
        return None
    files = packaged_names()
    return MigrationState(len(done), sorted(files - done), sorted(done - files))
