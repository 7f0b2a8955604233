"""Run operations over HTTP that the client library does not cover: bulk DLQ replay, retry headers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.conftest import Endpoint, Server, wait_for


def _job(c: Any, endpoint: Endpoint, **extra: Any) -> str:
    c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}).raise_for_status()
    r = c.post("/v1/jobs", json={"project_id": "p", "name": "J", "slug": "j", "endpoint_url": endpoint.url, **extra})
    r.raise_for_status()
    return str(r.json()["id"])


def test_bulk_dlq_replay_requeues_dead_letters(strait: Server, endpoint: Endpoint) -> None:
    endpoint.behave = lambda seen: web.json_response({"no": True}, status=422)
    with strait.client("p") as c:
        job = _job(c, endpoint, max_attempts=1)
        items = [{"payload": {"i": i}} for i in range(3)]
        ids = [r["id"] for r in c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": items}).json()["results"]]
        wait_for(lambda: len(c.get("/v1/runs/dlq").json()["data"]) == 3, what="3 dead letters")
        endpoint.behave = None
        r = c.post("/v1/runs/bulk-dlq-replay", json={"run_ids": ids[:2]})
        assert r.status_code == 200 and r.json()["count"] == 2 and set(r.json()["replayed"]) == set(ids[:2])
        wait_for(
            lambda: [c.get(f"/v1/runs/{i}").json()["status"] for i in ids] == ["completed", "completed", "dead_letter"],
            what="the two replayed runs complete",
        )
        by_project = c.post("/v1/runs/bulk-dlq-replay", json={"project_id": "p", "limit": 10}).json()
        assert by_project == {"replayed": [ids[2]], "count": 1}
        bad = c.post("/v1/runs/bulk-dlq-replay", json={"run_ids": ids, "project_id": "p"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def test_a_retry_carries_the_previous_error(strait: Server, endpoint: Endpoint) -> None:
    endpoint.behave = lambda seen: (
        web.json_response({}, status=503) if seen["headers"]["X-Attempt"] == "1" else {"ok": True}
    )
    with strait.client("p") as c:
        job = _job(c, endpoint, max_attempts=2, retry_strategy="fixed")
        run = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {}}).json()
        wait_for(lambda: c.get(f"/v1/runs/{run['id']}").json()["status"] == "completed", what="completed")
        second = c.get(f"/v1/runs/{run['id']}").json()
    assert second["attempt"] == 2 and second["priority"] == 1, "a retry gets the job's priority boost"
    first, retry = endpoint.requests
    assert "X-Previous-Error" not in first["headers"]
    assert retry["headers"]["X-Previous-Error"] == "endpoint returned 503"
    assert retry["headers"]["X-Run-Token"] != first["headers"]["X-Run-Token"], "a fresh token per attempt"


def test_a_timeout_is_retried_then_ends_timed_out(strait: Server, endpoint: Endpoint) -> None:
    import asyncio

    async def hang(_: dict[str, Any]) -> dict[str, bool]:
        await asyncio.sleep(5)
        return {"late": True}

    endpoint.behave = hang
    with strait.client("p") as c:
        job = _job(c, endpoint, max_attempts=2, timeout_secs=1, retry_strategy="fixed")
        run_id = c.post(f"/v1/jobs/{job}/trigger", json={}).json()["id"]
        final = wait_for(
            lambda: (r := c.get(f"/v1/runs/{run_id}").json())["status"] == "timed_out" and r, what="timed_out"
        )
    assert (final["attempt"], final["error"], final["error_class"]) == (2, "execution timed out", "transient")
    assert len(endpoint.requests) == 2


def test_dedup_window_and_job_rate_limit(strait: Server, endpoint: Endpoint) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint, dedup_window_secs=60, rate_limit_max=3, rate_limit_window_secs=60)
        first = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"a": 1, "b": 2}})
        again = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"b": 2, "a": 1}})  # same canonical payload
        assert first.status_code == again.status_code == 201
        assert again.json()["id"] == first.json()["id"] and again.json()["idempotency_hit"] is False
        assert c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"a": 2}}).status_code == 201
        assert c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"a": 3}}).status_code == 201
        refused = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"a": 4}})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "enqueue_throttled"
        assert len(c.get("/v1/runs", params={"job_id": job}).json()["data"]) == 3


def test_run_list_filters_by_status_and_job(strait: Server, endpoint: Endpoint) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint)
        other = c.post(
            "/v1/jobs", json={"project_id": "p", "name": "K", "slug": "k", "endpoint_url": endpoint.url}
        ).json()["id"]
        done = c.post(f"/v1/jobs/{job}/trigger", json={}).json()["id"]
        later = c.post(f"/v1/jobs/{other}/trigger", json={"scheduled_at": "2999-01-01T00:00:00Z"})
        assert later.status_code == 400  # more than 30 days ahead
        soon = c.post(f"/v1/jobs/{other}/trigger", json={"scheduled_at": _in(3600)}).json()["id"]
        wait_for(lambda: c.get(f"/v1/runs/{done}").json()["status"] == "completed", what="completed")
        ids = lambda **q: [r["id"] for r in c.get("/v1/runs", params=q).json()["data"]]  # noqa: E731
        assert ids(status="completed") == [done]
        assert ids(status="delayed") == [soon]
        assert ids(job_id=other) == [soon]
        assert sorted(ids(statuses=["delayed", "completed"])) == sorted([done, soon])
        assert c.get("/v1/runs", params={"status": "bogus"}).status_code == 400


def _in(seconds: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def test_a_lost_database_is_a_503_not_a_500(dsn: str, pg_dsn: str, tmp_path: Any) -> None:
    import psycopg

    from tests.conftest import start_strait, stop_strait

    server = start_strait({"DATABASE_URL": dsn, "DB_POOL_SIZE": "2"}, tmp_path, mode="api")
    try:
        with server.client("p") as c:
            assert c.get("/v1/runs").status_code == 200
            name = dsn.split("/")[3].split("?")[0]
            with psycopg.connect(pg_dsn, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                r = c.get("/v1/runs")
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "service_unavailable"
                assert c.get("/health/ready").status_code == 503
            finally:
                with psycopg.connect(pg_dsn, autocommit=True) as admin:
                    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            wait_for(lambda: c.get("/v1/runs").status_code == 200, what="recovery")
    finally:
        stop_strait(server)


def test_dry_run_validates_and_creates_nothing(strait: Server, endpoint: Endpoint) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint, timeout_secs=30)
        r = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"b": 1, "a": 2}, "dry_run": True})
        assert r.status_code == 200
        body = r.json()
        assert body["job"]["id"] == job and body["job"]["timeout_secs"] == 30
        assert body["payload"] == {"b": 1, "a": 2} and len(body["payload_hash"]) == 64
        assert body["expires_at"].endswith("Z")
        assert c.get("/v1/runs").json()["data"] == []


def test_worker_mode_runs_are_not_posted(strait: Server, endpoint: Endpoint) -> None:
    with strait.client("p") as c:
        http_job = _job(c, endpoint)
        worker_job = c.post(
            "/v1/jobs", json={"project_id": "p", "name": "W", "slug": "w", "execution_mode": "worker"}
        ).json()["id"]
        parked = c.post(f"/v1/jobs/{worker_job}/trigger", json={"priority": 10}).json()["id"]
        done = c.post(f"/v1/jobs/{http_job}/trigger", json={}).json()["id"]
        wait_for(lambda: c.get(f"/v1/runs/{done}").json()["status"] == "completed", what="the http run")
        assert c.get(f"/v1/runs/{parked}").json()["status"] == "queued"
    assert endpoint.run_ids() == [done]


def test_trigger_of_a_job_deleted_elsewhere_is_404(strait: Server, endpoint: Endpoint, dsn: str) -> None:
    import psycopg

    with strait.client("p") as c:
        job = _job(c, endpoint)
        assert c.post(f"/v1/jobs/{job}/trigger", json={}).status_code == 201  # the API now caches the job
        wait_for(lambda: c.get("/v1/runs").json()["data"][0]["status"] == "completed", what="completed")
        with psycopg.connect(dsn, autocommit=True) as conn:  # another API process deletes it
            conn.execute("DELETE FROM jobs WHERE id = %s", (job,))
        r = c.post(f"/v1/jobs/{job}/trigger", json={})
        assert r.status_code == 404 and r.json()["error"]["message"] == "job not found"
    assert "Traceback" not in strait.logs()
