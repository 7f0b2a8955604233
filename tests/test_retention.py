"""Retention (engine.md §7.3) against real PostgreSQL: terminal runs go once past their status's
retention, with every row of their own; dead_letter, live and recent runs stay; passes are bounded;
answered event triggers go, waiting ones stay."""

from __future__ import annotations

import os
import time
import uuid

import psycopg

from strait_actors import ids
from strait_actors.store import retention
from tests.helpers import make_job

DAY = 86400


def old_id(days_ago: float) -> uuid.UUID:
    """A UUIDv7 made `days_ago` (as the run's own id would have been)."""
    floor = ids.uuid7_floor(time.time() - days_ago * DAY).int
    return uuid.UUID(int=floor | int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1))


def old_run(conn: psycopg.Connection, job: str, status: str, created_days: float, finished_days: float | None) -> str:
    run_id = old_id(created_days)
    conn.execute(
        "INSERT INTO job_runs (id, job_id, project_id, status, payload, payload_hash, created_at, finished_at) "
        "VALUES (%s, %s, 'p', %s, '{}', 'h', now() - make_interval(secs => %s), "
        "CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => %s) END)",
        (run_id, job, status, created_days * DAY, finished_days, (finished_days or 0) * DAY),
    )
    # every row of its own that retention must take with it
    conn.execute("INSERT INTO run_events (run_id, type) VALUES (%s, 'log')", (run_id,))
    conn.execute("INSERT INTO run_checkpoints (run_id, sequence, state) VALUES (%s, 1, '{}')", (run_id,))
    conn.execute(
        "INSERT INTO run_outputs (id, run_id, output_key, value) VALUES (%s, %s, 'k', '1')", (uuid.uuid4(), run_id)
    )
    conn.execute("INSERT INTO run_state (run_id, state_key, value) VALUES (%s, 'k', '1')", (run_id,))
    conn.execute("INSERT INTO run_tool_calls (run_id, tool_name) VALUES (%s, 't')", (run_id,))
    conn.execute(
        "INSERT INTO event_triggers (id, event_key, project_id, source_type, job_run_id, status, timeout_secs, "
        "expires_at) VALUES (%s, %s, 'p', 'job_run', %s, 'canceled', 60, now())",
        (ids.uuid7(), f"k-{run_id}", run_id),
    )
    return str(run_id)


def left(conn: psycopg.Connection) -> dict[str, int]:
    return {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
        for t in ("job_runs", "run_events", "run_checkpoints", "run_outputs", "run_state", "run_tool_calls")
    }


def test_retention_deletes_old_terminal_runs_with_their_rows_and_keeps_the_rest(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        gone = {
            old_run(conn, job, "completed", 32, 31),
            old_run(conn, job, "canceled", 60, 59),
            old_run(conn, job, "crashed", 95, 91),  # past the long retention
        }
        kept = {
            old_run(conn, job, "dead_letter", 300, 299),  # never
            old_run(conn, job, "timed_out", 40, 31),  # long retention: 90 days
            old_run(conn, job, "completed", 40, 1),  # created long ago, finished yesterday
            old_run(conn, job, "waiting", 40, None),  # alive
            old_run(conn, job, "queued", 40, None),
            old_run(conn, job, "completed", 0, 0),
        }
        assert retention.purge_runs(conn, 720, 2160, limit=2) == 2  # bounded
        assert retention.purge_runs(conn, 720, 2160, limit=2) == 1
        assert retention.purge_runs(conn, 720, 2160, limit=2) == 0
        rows = {str(r[0]) for r in conn.execute("SELECT id FROM job_runs")}
        assert rows == kept and not rows & gone
        assert left(conn) == dict.fromkeys(left(conn), len(kept))  # each kept run's rows, none of the others'
        triggers = {str(r[0]) for r in conn.execute("SELECT job_run_id FROM event_triggers")}
        assert triggers == kept
        # 0 keeps a class: with the short retention off, completed runs stay
        assert retention.purge_runs(conn, 0, 24, limit=100) == 1  # the timed_out run; no completed one
        assert retention.purge_runs(conn, 0, 0, limit=100) == 0


def test_retention_of_event_triggers(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_job(conn, "http://x/")
        for key, status, days in (
            ("a", "received", 31),
            ("b", "timed_out", 40),
            ("c", "waiting", 40),
            ("d", "received", 2),
        ):
            conn.execute(
                "INSERT INTO event_triggers (id, event_key, project_id, source_type, status, timeout_secs, expires_at, "
                "updated_at) VALUES (%s, %s, 'p', 'job_run', %s, 60, now(), now() - make_interval(secs => %s))",
                (old_id(days), key, status, days * DAY),
            )
        assert retention.purge_event_triggers(conn, 720, limit=100) == 2
        assert sorted(r[0] for r in conn.execute("SELECT event_key FROM event_triggers")) == ["c", "d"]
        assert retention.purge_event_triggers(conn, 0, limit=100) == 0


def test_retention_of_shared_circuits(dsn: str) -> None:
    """Closed circuits untouched for a week go; open ones and recent ones stay."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for url_hash, open_for, days in (("old", None, 8), ("recent", None, 2), ("open", "1 day", 8)):
            conn.execute(
                "INSERT INTO endpoint_circuits (project_id, url_hash, failures, open_until, updated_at) "
                "VALUES ('p', %s, 2, now() + %s::interval, now() - make_interval(days => %s))",
                (url_hash, open_for, days),
            )
        assert retention.purge_circuits(conn, limit=100) == 1
        assert sorted(r[0] for r in conn.execute("SELECT url_hash FROM endpoint_circuits")) == ["open", "recent"]
