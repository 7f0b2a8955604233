"""Connections and migrations.

Migrations are `migrations/NNNN_name.sql`, applied in order at start-up under an
advisory lock, so several processes starting at once apply each file exactly once.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import psycopg

from strait_actors.store.sql import q

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
