"""The program's edges: bad settings stop start-up with one line; migrations are safe in parallel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg

from strait_actors.store import db
from tests.conftest import with_db


def _strait(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "STRAIT_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run(
        [sys.executable, "-m", "strait_actors.cli", *args], env=full, capture_output=True, text=True, timeout=60
    )


def test_bad_settings_stop_startup_with_one_line(tmp_path: Path) -> None:
    for env, line in [
        ({"INTERNAL_SECRET": "short"}, "strait: INTERNAL_SECRET: must be at least 16 characters"),
        ({"JWT_SIGNING_KEY": "too-short"}, "strait: JWT_SIGNING_KEY: must be at least 32 characters"),
        ({"PORT": "http"}, "strait: PORT: expected a number, got 'http'"),
        ({"LOG_LEVEL": "chatty"}, "strait: LOG_LEVEL: must be one of debug|info|warn|warning|error, got 'chatty'"),
    ]:
        done = _strait(["--mode", "all"], env, tmp_path)
        assert done.returncode == 2
        assert done.stderr.strip() == line
    assert not (tmp_path / "data" / "pg").exists(), "nothing was started"
    for flag in ("--processes", "--api-processes"):
        done = _strait(["--mode", "all", flag, "0"], {}, tmp_path)
        assert done.returncode == 2 and done.stderr.strip() == f"strait: {flag}: must be at least 1"


def test_migrate_command_applies_the_schema(pg_dsn: str, tmp_path: Path) -> None:
    name = f"mig_{os.getpid()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    fresh = with_db(pg_dsn, name)
    secrets = {"INTERNAL_SECRET": "x" * 16, "JWT_SIGNING_KEY": "y" * 32}
    done = _strait(["migrate"], {"DATABASE_URL": fresh, **secrets}, tmp_path)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(fresh) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations")]
    assert names == [p.name for p in db.migration_files()]
    unreachable = _strait(["migrate"], {"DATABASE_URL": with_db(pg_dsn, "no_such_db"), **secrets}, tmp_path)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("strait: cannot use the database:")
    assert "Traceback" not in unreachable.stderr


def test_concurrent_migrations_apply_each_file_once(pg_dsn: str) -> None:
    name = f"conc_{os.getpid()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    target = pg_dsn.replace("/postgres?", f"/{name}?")
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(db.migrate(target))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, 0, len(db.migration_files())]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
