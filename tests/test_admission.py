"""Admission at trigger time (engine.md §2.5): named rate-limit keys shared by a project's jobs, the
job rate limit counted in PostgreSQL or in Redis, project quotas on queued and executing runs."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from strait_actors.store import retention, schedules
from tests.conftest import SECRET, Endpoint, Server, start_strait, stop_strait, wait_for
from tests.helpers import make_job

LATER = (datetime.now(UTC) + timedelta(days=1)).isoformat()  # delayed runs: they stay put


@pytest.fixture(params=["postgres", "redis"])
def server(request: pytest.FixtureRequest, dsn: str, tmp_path: Path) -> Iterator[Server]:
    """`strait --mode all` counting rate limits in PostgreSQL, or in Redis."""
    env = {"DATABASE_URL": dsn}
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    srv = start_strait(env, tmp_path, processes=1)
    yield srv
    stop_strait(srv)


def _project(c: httpx.Client, pid: str) -> None:
    c.post("/v1/projects", json={"id": pid, "org_id": "o", "name": f"Project {pid}"}).raise_for_status()


def _job(c: httpx.Client, pid: str, slug: str, url: str, **extra: Any) -> str:
    body = {"project_id": pid, "name": slug, "slug": slug, "endpoint_url": url, **extra}
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _trigger(c: httpx.Client, job: str, **body: Any) -> httpx.Response:
    return c.post(f"/v1/jobs/{job}/trigger", json={"scheduled_at": LATER, **body})


def _count(dsn: str, sql: str, *args: Any) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql, args).fetchone()
        assert row is not None
        return int(row[0])


def _refused(r: httpx.Response, message: str, most: int) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "enqueue_throttled"
    assert r.json()["error"]["message"] == message
    assert 1 <= int(r.headers["Retry-After"]) <= most


def test_a_named_key_is_shared_by_the_jobs_of_a_project(server: Server, endpoint: Endpoint) -> None:
    key = [{"key": "openai", "max": 3, "window_secs": 60}]
    with server.client() as c:
        _project(c, "p")
        _project(c, "q")
        a = _job(c, "p", "a", endpoint.url, rate_limit_keys=key)
        b = _job(c, "p", "b", endpoint.url, rate_limit_keys=key)
        other = _job(c, "q", "a", endpoint.url, rate_limit_keys=key)  # another project: its own count
        assert c.get(f"/v1/jobs/{a}").json()["rate_limit_keys"] == key
        assert [_trigger(c, j).status_code for j in (a, b, a)] == [201, 201, 201]
        _refused(_trigger(c, b), 'rate limit key "openai" exceeded', 60)
        _refused(_trigger(c, a), 'rate limit key "openai" exceeded', 60)
        assert _trigger(c, other).status_code == 201
        # an idempotency hit creates nothing, so it takes nothing (a retry of the same call is free)
        first = _trigger(c, other, idempotency_key="k1")
        again = _trigger(c, other, idempotency_key="k1")
        assert first.status_code == 201 and again.status_code == 200 and again.json()["idempotency_hit"]
        assert _trigger(c, other).status_code == 201  # 3rd run of q's window
        _refused(_trigger(c, other), 'rate limit key "openai" exceeded', 60)
        # a bulk trigger is admitted whole or not at all
        _project(c, "r")
        bulk_job = _job(c, "r", "bulk", endpoint.url, rate_limit_keys=key)
        items = [{"payload": {"i": i}, "scheduled_at": LATER} for i in range(2)]
        assert c.post(f"/v1/jobs/{bulk_job}/trigger/bulk", json={"items": items}).status_code == 201
        r = c.post(f"/v1/jobs/{bulk_job}/trigger/bulk", json={"items": items})
        _refused(r, 'rate limit key "openai" exceeded', 60)
        assert c.post(f"/v1/jobs/{bulk_job}/trigger/bulk", json={"items": items[:1]}).status_code == 201
    runs = "SELECT count(*) FROM job_runs WHERE project_id = %s"
    assert [_count(server.env["DATABASE_URL"], runs, p) for p in ("p", "q", "r")] == [3, 3, 3]


def test_the_window_slides(server: Server, endpoint: Endpoint) -> None:
    with server.client() as c:
        _project(c, "p")
        job = _job(c, "p", "j", endpoint.url, rate_limit_max=2, rate_limit_window_secs=2)
        keyed = _job(c, "p", "k", endpoint.url, rate_limit_keys=[{"key": "s", "max": 1, "window_secs": 2}])
        assert [_trigger(c, job).status_code for _ in range(2)] == [201, 201]
        assert _trigger(c, keyed).status_code == 201
        _refused(_trigger(c, job), "job rate limit exceeded", 2)
        _refused(_trigger(c, keyed), 'rate limit key "s" exceeded', 2)
        wait_for(lambda: _trigger(c, job).status_code == 201, timeout=5, what="the job's window moved on")
        wait_for(lambda: _trigger(c, keyed).status_code == 201, timeout=5, what="the key's window moved on")


def test_concurrent_triggers_never_exceed_a_limit(server: Server, endpoint: Endpoint) -> None:
    with server.client() as c:
        _project(c, "p")
        job = _job(c, "p", "j", endpoint.url, rate_limit_max=10, rate_limit_window_secs=600)
        keyed = _job(c, "p", "k", endpoint.url, rate_limit_keys=[{"key": "shared", "max": 15, "window_secs": 600}])
        both = _job(
            c, "p", "b", endpoint.url, rate_limit_keys=[{"key": "shared", "max": 15, "window_secs": 600}]
        )  # the same key as `keyed`: 15 between them

    async def storm() -> list[int]:
        headers = {"Authorization": f"Bearer {SECRET}", "X-Project-Id": "p"}
        async with httpx.AsyncClient(base_url=server.base, headers=headers, timeout=60) as ac:

            async def one(j: str, i: int) -> int:
                r = await ac.post(f"/v1/jobs/{j}/trigger", json={"payload": {"i": i}, "scheduled_at": LATER})
                assert r.status_code in (201, 429), r.text
                return r.status_code

            return await asyncio.gather(*(one(j, i) for i in range(60) for j in (job, keyed, both)))

    codes = asyncio.run(storm())
    assert codes.count(201) == 10 + 15
    db = server.env["DATABASE_URL"]
    assert _count(db, "SELECT count(*) FROM job_runs WHERE job_id = %s", job) == 10
    assert _count(db, "SELECT count(*) FROM job_runs WHERE job_id = ANY(%s)", [keyed, both]) == 15


def _quota(c: httpx.Client, pid: str, **values: Any) -> None:
    r = c.put(f"/v1/projects/{pid}/quotas", json=values)
    assert r.status_code == 200, r.text
    for name, value in values.items():
        assert r.json()[name] == value


def test_queued_quota(strait: Server, endpoint: Endpoint) -> None:
    with strait.client() as c:
        _project(c, "p")
        _project(c, "q")
        job = _job(c, "p", "j", endpoint.url)
        free = _job(c, "q", "j", endpoint.url)
        _quota(c, "p", max_queued_runs=3)
        assert [_trigger(c, job).status_code for _ in range(3)] == [201, 201, 201]
        _refused(_trigger(c, job), "project queued quota exceeded", 5)
        assert _trigger(c, free).status_code == 201  # another project has no quota
        items = [{"scheduled_at": LATER}]
        _refused(c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": items}), "project queued quota exceeded", 5)
        # a run leaving the queue makes room
        first = c.get("/v1/runs", params={"job_id": job}, headers={"X-Project-Id": "p"}).json()["data"][0]["id"]
        assert c.delete(f"/v1/runs/{first}").status_code == 200
        assert _trigger(c, job).status_code == 201
        _refused(_trigger(c, job), "project queued quota exceeded", 5)
        _quota(c, "p")  # no quota any more
        assert _trigger(c, job).status_code == 201


def test_executing_quota(strait: Server, endpoint: Endpoint) -> None:
    release = threading.Event()

    async def slow(seen: dict[str, Any]) -> web.Response:
        while not release.is_set():
            await asyncio.sleep(0.05)
        return web.json_response({"ok": True})

    endpoint.behave = slow
    with strait.client() as c:
        _project(c, "p")
        job = _job(c, "p", "j", endpoint.url)
        _quota(c, "p", max_executing_runs=1)
        run = c.post(f"/v1/jobs/{job}/trigger", json={}).json()["id"]
        wait_for(lambda: c.get(f"/v1/runs/{run}").json()["status"] == "executing", what="the first run executing")
        _refused(c.post(f"/v1/jobs/{job}/trigger", json={}), "project executing quota exceeded", 5)
        release.set()
        wait_for(lambda: c.get(f"/v1/runs/{run}").json()["status"] == "completed", what="the first run completed")
        assert c.post(f"/v1/jobs/{job}/trigger", json={}).status_code == 201


def test_concurrent_triggers_never_exceed_the_queued_quota(strait: Server, endpoint: Endpoint) -> None:
    with strait.client() as c:
        _project(c, "p")
        jobs = [_job(c, "p", f"j{i}", endpoint.url) for i in range(3)]
        _quota(c, "p", max_queued_runs=20)

    async def storm() -> list[int]:
        headers = {"Authorization": f"Bearer {SECRET}", "X-Project-Id": "p"}
        async with httpx.AsyncClient(base_url=strait.base, headers=headers, timeout=60) as ac:

            async def one(j: str) -> int:
                r = await ac.post(f"/v1/jobs/{j}/trigger", json={"scheduled_at": LATER})
                return r.status_code

            return await asyncio.gather(*(one(j) for _ in range(40) for j in jobs))

    codes = asyncio.run(storm())
    assert sorted(set(codes)) == [201, 429] and codes.count(201) == 20
    assert _count(strait.env["DATABASE_URL"], "SELECT count(*) FROM job_runs") == 20


def test_bad_rate_limit_keys_and_quotas_are_refused(strait: Server, endpoint: Endpoint) -> None:
    def entry(**over: Any) -> list[dict[str, Any]]:
        return [{"key": "k", "max": 1, "window_secs": 60, **over}]

    with strait.client() as c:
        _project(c, "p")
        bad: list[Any] = [
            "k",
            ["k"],
            entry(key=""),
            entry(key="a b"),
            entry(key="x" * 129),
            entry(max=0),
            entry(max=True),
            entry(window_secs=0),
            entry(window_secs=30 * 86_400 + 1),
            entry(extra=1),
            entry() + entry(),
            [{"key": f"k{i}", "max": 1, "window_secs": 1} for i in range(21)],
        ]
        for i, keys in enumerate(bad):
            body = {"project_id": "p", "name": "j", "slug": f"j{i}", "endpoint_url": endpoint.url}
            r = c.post("/v1/jobs", json={**body, "rate_limit_keys": keys})
            assert r.status_code in (400, 422), (keys, r.text)
        assert _count(strait.env["DATABASE_URL"], "SELECT count(*) FROM jobs") == 0  # nothing half-written
        job = _job(c, "p", "ok", endpoint.url, rate_limit_keys=entry())
        assert c.patch(f"/v1/jobs/{job}", json={"rate_limit_keys": entry(max=-1)}).status_code == 400
        assert c.patch(f"/v1/jobs/{job}", json={"rate_limit_keys": []}).json()["rate_limit_keys"] == []
        for value in (-1, 2**31, "3", 1.5):
            r = c.put("/v1/projects/p/quotas", json={"max_queued_runs": value})
            assert r.status_code == 422, r.text


def test_cron_ticks_skip_over_a_quota_or_a_named_key(dsn: str) -> None:
    at = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        key = '[{"key": "k", "max": 1, "window_secs": 3600}]'
        keyed = make_job(conn, "http://x/", cron="* * * * *", next_fire_at=at, rate_limit_keys=key)
        fired = {f.job_id: f for f in schedules.fire_due(conn, at)}
        assert fired[keyed].skipped is None and fired[keyed].run_id is not None
        hits = conn.execute("SELECT key, n FROM rate_limit_hits WHERE project_id = 'p'").fetchall()
        assert hits == [("k", 1)]  # the cron run took its hit
        conn.execute("UPDATE jobs SET next_fire_at = %s WHERE id = %s", (at, keyed))
        assert schedules.fire_due(conn, at)[0].skipped == "rate_limit"
        conn.execute("UPDATE jobs SET rate_limit_keys = '[]'")
        # runs made before the project had a quota are not counted (README): the quota's first run is
        conn.execute("INSERT INTO project_quotas (project_id, max_queued_runs) VALUES ('p', 1)")
        later = at + timedelta(minutes=1)
        conn.execute("UPDATE jobs SET next_fire_at = %s WHERE id = %s", (later, keyed))
        assert schedules.fire_due(conn, later)[0].skipped is None
        conn.execute("UPDATE jobs SET next_fire_at = %s WHERE id = %s", (later, keyed))
        assert schedules.fire_due(conn, later)[0].skipped == "quota"  # that run is still queued
        conn.execute("UPDATE project_quotas SET max_queued_runs = NULL, max_executing_runs = 0")
        conn.execute("UPDATE jobs SET next_fire_at = %s WHERE id = %s", (at, keyed))
        assert schedules.fire_due(conn, at)[0].skipped == "quota"
        conn.execute("UPDATE project_quotas SET max_executing_runs = 5")
        conn.execute("UPDATE jobs SET next_fire_at = %s WHERE id = %s", (at, keyed))
        assert schedules.fire_due(conn, at)[0].skipped is None


def test_old_hits_are_purged_in_batches(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rate_limit_hits (project_id, key, at, n) SELECT 'p', 'k', now() - interval '31 days', 1"
            " FROM generate_series(1, 5)"
        )
        conn.execute("INSERT INTO rate_limit_hits (project_id, key, n) VALUES ('p', 'k', 1)")
        assert retention.purge_rate_hits(conn, 3) == 3
        assert retention.purge_rate_hits(conn, 3) == 2
        assert retention.purge_rate_hits(conn, 3) == 0
        assert _count(dsn, "SELECT count(*) FROM rate_limit_hits") == 1


def test_every_insert_into_job_runs_marks_whether_its_project_counts_quotas() -> None:
    """A run made by a statement that does not set `quota_counted` would escape its project's
    quota count: every INSERT into job_runs in the named statements sets it from the project."""
    text = (Path(__file__).parents[1] / "strait_actors" / "store" / "queries.sql").read_text()
    inserts = re.findall(r"INSERT INTO job_runs\b[^(]*\(([^)]*)\)", text)
    assert len(inserts) >= 7
    for columns in inserts:
        assert "quota_counted" in columns, columns
    assert text.count("strait_quota_counted(") == len(inserts)


def test_runs_are_counted_from_the_quota_on(strait: Server, endpoint: Endpoint) -> None:
    """Runs made after a project set a queued or executing quota are marked, whatever made them;
    runs of a project without one are not (they cost the quota index nothing)."""
    with strait.client() as c:
        _project(c, "p")
        _project(c, "q")
        job = _job(c, "p", "j", endpoint.url, max_attempts=1)
        free = _job(c, "q", "j", endpoint.url)
        before = _trigger(c, job).json()["id"]
        _quota(c, "p", max_queued_runs=100)
        after = _trigger(c, job).json()["id"]
        other = _trigger(c, free).json()["id"]
        endpoint.behave = lambda seen: web.json_response({"no": True}, status=500)
        failed = c.post(f"/v1/jobs/{job}/trigger", json={}).json()["id"]
        wait_for(lambda: c.get(f"/v1/runs/{failed}").json()["status"] == "dead_letter", what="a dead letter")
        endpoint.behave = None
        with psycopg.connect(strait.env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("UPDATE job_runs SET status = 'failed' WHERE id = %s", (failed,))
        replayed = c.post(f"/v1/runs/{failed}/replay").json()["id"]
    with psycopg.connect(strait.env["DATABASE_URL"], autocommit=True) as conn:
        marks = {str(k): v for k, v in conn.execute("SELECT id, quota_counted FROM job_runs").fetchall()}
    assert marks[before] is False and marks[other] is False
    assert marks[after] is True and marks[failed] is True and marks[replayed] is True


def test_windowed_triggers_are_judged_on_the_runs_they_make(server: Server, endpoint: Endpoint) -> None:
    """Debounce and batch windows: a trigger that joins its window's run costs nothing; one that makes
    a run is judged as any trigger is, by every limit (named keys, the job's own, the project's quota),
    counted in PostgreSQL or in Redis; a refused bulk trigger leaves nothing behind."""
    key = [{"key": "w", "max": 2, "window_secs": 600}]

    def win(c: httpx.Client, job: str, **body: Any) -> httpx.Response:
        return c.post(f"/v1/jobs/{job}/trigger", json=body)

    with server.client() as c:
        _project(c, "p")
        keyed = _job(c, "p", "k", endpoint.url, debounce_window_secs=600, rate_limit_keys=key)
        answers = [win(c, keyed, debounce_key=k) for k in ("a", "a", "b", "b")]
        assert [a.status_code for a in answers] == [201] * 4
        ids = [a.json()["id"] for a in answers]
        assert ids[0] == ids[1] != ids[2] == ids[3]
        _refused(win(c, keyed, debounce_key="c"), 'rate limit key "w" exceeded', 600)
        assert win(c, keyed, debounce_key="a").json()["id"] == ids[0]  # joins: admitted, free
        plain = _job(c, "p", "o", endpoint.url, rate_limit_keys=key)  # the key's count is the project's
        _refused(_trigger(c, plain), 'rate limit key "w" exceeded', 600)

        limited = _job(c, "p", "l", endpoint.url, batch_window_secs=600, rate_limit_max=1)
        items = [{"payload": {"i": i}, "batch_key": "x"} for i in range(2)]
        assert c.post(f"/v1/jobs/{limited}/trigger/bulk", json={"items": items}).status_code == 201  # one run
        items = [{"payload": {"i": 3}, "batch_key": "x"}, {"payload": {"i": 4}, "batch_key": "y"}]
        _refused(c.post(f"/v1/jobs/{limited}/trigger/bulk", json={"items": items}), "job rate limit exceeded", 600)

        _project(c, "q")
        quota = _job(c, "q", "j", endpoint.url, batch_window_secs=600)
        _quota(c, "q", max_queued_runs=1)
        assert [win(c, quota, batch_key="a").status_code for _ in range(2)] == [201, 201]
        _refused(win(c, quota, batch_key="b"), "project queued quota exceeded", 5)
    db = server.env["DATABASE_URL"]
    per_job = "SELECT count(*) FROM job_runs WHERE job_id = %s"
    assert [_count(db, per_job, j) for j in (keyed, plain, limited, quota)] == [2, 0, 1, 1]
    batch = "SELECT payload::text FROM job_runs WHERE job_id = %s"
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(batch, (limited,)).fetchone()
    assert row is not None and row[0] == '{"items":[{"i":0},{"i":1}]}', "the refused bulk trigger joined nothing"
