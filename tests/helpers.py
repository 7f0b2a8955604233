"""Direct database set-up for worker-level tests (the API is exercised elsewhere)."""

from __future__ import annotations

from typing import Any

import psycopg

from strait_actors import ids
from tests.conftest import wait_for


def make_job(conn: psycopg.Connection, endpoint_url: str, **cols: Any) -> str:
    conn.execute("INSERT INTO projects (id, org_id, name) VALUES ('p', 'o', 'P') ON CONFLICT DO NOTHING")
    job_id = ids.new_id()
    values = {
        "id": job_id,
        "project_id": "p",
        "name": "j",
        "slug": f"j-{job_id[-8:]}",
        "endpoint_url": endpoint_url,
        "version_id": ids.version_id(),
        **cols,
    }
    names = ", ".join(values)
    marks = ", ".join(f"%({k})s" for k in values)
    conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", values)  # test set-up only
    return job_id


def make_runs(
    conn: psycopg.Connection,
    job_id: str,
    n: int,
    status: str = "queued",
    payload: str = '{"n":1}',
    run_ids: list[str] | None = None,
    **cols: Any,
) -> list[str]:
    """n new runs, or the runs `run_ids` (written in that order)."""
    run_ids = run_ids if run_ids is not None else [ids.new_id() for _ in range(n)]
    extra = ", ".join(cols)
    marks = ", ".join(f"%({k})s" for k in cols)
    sql = (
        f"INSERT INTO job_runs (id, job_id, project_id, status, payload, payload_hash"
        f"{', ' + extra if extra else ''}) VALUES (%(id)s, %(job)s, 'p', %(status)s, %(payload)s, 'h'"
        f"{', ' + marks if marks else ''})"
    )
    with conn.cursor() as cur:
        cur.executemany(sql, [{"id": r, "job": job_id, "status": status, "payload": payload, **cols} for r in run_ids])
    return run_ids


def statuses(conn: psycopg.Connection) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute("SELECT status, count(*) FROM job_runs GROUP BY 1")}


def finish_params(run_ids: list[str], lease: str) -> dict[str, Any]:
    """The parameters of `sdk_finish` completing these runs (attempt 1, under `lease`), results checked."""
    n = len(run_ids)
    return {
        "ids": run_ids,
        "attempts": [1] * n,
        "leases": [lease] * n,
        "statuses": ["completed"] * n,
        "results": ["{}"] * n,
        "errors": [None] * n,
        "error_classes": [None] * n,
        "checked": [True] * n,
    }


def wait_for_a_lock_wait(probe: psycopg.Connection, what: str) -> None:
    """Until another session of this database waits for a lock (a statement blocked by a row that a
    test's open transaction holds)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    )
    wait_for(lambda: probe.execute(query).fetchone() == (1,), timeout=10, what=what)
