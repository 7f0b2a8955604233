"""A trigger that times out (REQUEST_TIMEOUT) never answers 503 for a run that exists or will.

Its runs are withdrawn while they wait for a connection (503, nothing written), or, once their
INSERT is on its way, the request waits for the commit and answers what it decided. The INSERT is
held back for real: another transaction holds the job row (the foreign-key check waits for it).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import Endpoint, Server, start_strait, stop_strait, wait_for


def _server(dsn: str, tmp_path: Path) -> Server:
    env = {"DATABASE_URL": dsn, "REQUEST_TIMEOUT_SECS": "1", "DB_POOL_SIZE": "1"}
    return start_strait(env, tmp_path, mode="api", processes=1)


def _job(server: Server, endpoint: Endpoint, **extra: Any) -> str:
    with server.client("p") as c:
        c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}).raise_for_status()
        made = c.post(
            "/v1/jobs", json={"project_id": "p", "name": "J", "slug": "j", "endpoint_url": endpoint.url, **extra}
        )
        made.raise_for_status()
        return str(made.json()["id"])


def _trigger_in_thread(
    server: Server, job: str, out: dict[str, httpx.Response], name: str, **kw: Any
) -> threading.Thread:
    def go() -> None:
        with server.client("p") as c:
            out[name] = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"who": name}}, **kw)

    t = threading.Thread(target=go)
    t.start()
    return t


def _runs(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id::text, payload->>'who' FROM job_runs ORDER BY created_at").fetchall()
    return [{"id": r[0], "who": r[1]} for r in rows]


def _hold_key(blocker: psycopg.Connection, job: str, key: str) -> None:
    """An uncommitted run holding `key`: an INSERT of the same key waits on the unique index."""
    blocker.execute(
        "INSERT INTO job_runs (id, job_id, project_id, status, payload, payload_hash, idempotency_key)"
        " VALUES (gen_random_uuid(), %s, 'p', 'queued', '{}', 'h', %s)",
        (job, key),
    )


def _in_doubt(server: Server) -> bool:
    """The server logged a trigger past its deadline with its INSERT in flight (store/enqueue.py)."""
    return "trigger outlived its deadline with its INSERT in flight" in server.logs()


def _insert_waiting(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO job_runs%'"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("admission", [False, True], ids=["shared-insert", "admission-lock"])
def test_a_timed_out_trigger_answers_what_the_database_decided(
    dsn: str, tmp_path: Path, endpoint: Endpoint, admission: bool
) -> None:
    server = _server(dsn, tmp_path)
    try:
        job = _job(server, endpoint, **({"dedup_window_secs": 60} if admission else {}))
        out: dict[str, httpx.Response] = {}
        with psycopg.connect(dsn) as blocker:
            _hold_key(blocker, job, "k")
            # a takes the only pool connection and sends its INSERT, which waits for the key
            a = _trigger_in_thread(server, job, out, "a", headers={"Idempotency-Key": "k"})
            wait_for(lambda: _insert_waiting(dsn), what="a's INSERT waiting on the key")
            # b's runs wait (for the connection a holds) without being sent
            b = _trigger_in_thread(server, job, out, "b")
            b.join(10)
            assert out["b"].status_code == 503 and out["b"].headers["Retry-After"], out["b"].text
            wait_for(lambda: _in_doubt(server), what="a to pass REQUEST_TIMEOUT with its INSERT in flight")
            assert "a" not in out, "a's INSERT was sent: it must wait for the commit, not answer 503"
            blocker.rollback()  # the key is free: a's INSERT commits now
        a.join(10)
        assert out["a"].status_code == 201, out["a"].text
        # c goes after b's flush (the pool hands its one connection to waiters in turn): once c is
        # in, what b withdrew has had its chance to be written, and must not have been
        with server.client("p") as c:
            assert c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"who": "c"}}).status_code == 201
        assert [r for r in _runs(dsn) if r["who"] != "c"] == [{"id": out["a"].json()["id"], "who": "a"}]
        assert httpx.get(f"{server.base}/health").status_code == 200
    finally:
        stop_strait(server)


def test_a_retried_keyed_trigger_finds_the_run_its_timed_out_attempt_wrote(
    dsn: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    server = _server(dsn, tmp_path)
    try:
        job = _job(server, endpoint)
        out: dict[str, httpx.Response] = {}
        with psycopg.connect(dsn) as blocker:
            _hold_key(blocker, job, "k1")
            first = _trigger_in_thread(server, job, out, "first", headers={"Idempotency-Key": "k1"})
            wait_for(lambda: _insert_waiting(dsn), what="the INSERT waiting on the key")
            wait_for(lambda: _in_doubt(server), what="the trigger to pass REQUEST_TIMEOUT")
            blocker.rollback()
        first.join(10)
        with server.client("p") as c:
            again = c.post(
                f"/v1/jobs/{job}/trigger", json={"payload": {"who": "again"}}, headers={"Idempotency-Key": "k1"}
            )
        runs = _runs(dsn)
        assert [r["who"] for r in runs] == ["first"]
        assert again.json()["id"] == runs[0]["id"] and again.json()["idempotency_hit"] is True
        assert out["first"].status_code == 201 and out["first"].json()["id"] == runs[0]["id"]
    finally:
        stop_strait(server)
