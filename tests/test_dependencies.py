"""Dependencies between jobs (engine.md §2.8): runs of a dependent job wait until the upstream job's
latest ended run with the same key ended the way the dependency asks, and are released in the
statement that ended it (the Reaper's backstop catches what that statement could not see)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from aiohttp import web

from strait_actors.model import Outcome
from strait_actors.store import queue, schedules
from strait_actors.store.sql import q
from tests.conftest import SECRET, Endpoint, Server, wait_for
from tests.helpers import make_job, make_runs


def _setup(c: httpx.Client) -> None:
    c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Project p"}).raise_for_status()


def _job(c: httpx.Client, slug: str, url: str, **extra: Any) -> str:
    r = c.post("/v1/jobs", json={"project_id": "p", "name": slug, "slug": slug, "endpoint_url": url, **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _depend(c: httpx.Client, job: str, on: str, condition: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"depends_on_job_id": on}
    if condition is not None:
        body["condition"] = condition
    return c.post(f"/v1/jobs/{job}/dependencies", json=body)


def _trigger(c: httpx.Client, job: str, **body: Any) -> dict[str, Any]:
    r = c.post(f"/v1/jobs/{job}/trigger", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _status(c: httpx.Client, run: str) -> str:
    return str(c.get(f"/v1/runs/{run}").json()["status"])


def _fails_job(name: str) -> Any:
    """An endpoint answer: 400 for runs of job `name` (by its X-Job-ID), 200 otherwise."""

    def behave(seen: dict[str, Any]) -> Any:
        if seen["headers"].get("X-Job-ID") == name:
            return web.json_response({"no": True}, status=400)
        return None

    return behave


def test_dependency_edges_and_bad_input(strait: Server, endpoint: Endpoint) -> None:
    with strait.client("p") as c:
        _setup(c)
        a, b, x = (_job(c, s, endpoint.url) for s in ("a", "b", "x"))
        c.post("/v1/projects", json={"id": "q", "org_id": "o", "name": "Project q"}).raise_for_status()
        with strait.client() as admin:
            body = {"project_id": "q", "name": "o", "slug": "o", "endpoint_url": endpoint.url}
            other = admin.post("/v1/jobs", json=body).json()["id"]
        made = _depend(c, b, a)
        assert made.status_code == 201, made.text
        dep = made.json()
        assert dep["job_id"] == b and dep["depends_on_job_id"] == a and dep["condition"] == "completed"
        assert c.get(f"/v1/jobs/{b}").json()["has_dependencies"] is True
        assert _depend(c, b, a).status_code == 409
        assert _depend(c, a, b).status_code == 400  # a cycle
        assert _depend(c, x, b).status_code == 201
        cycle = _depend(c, a, x)  # a -> x -> b -> a
        assert cycle.status_code == 400 and cycle.json()["error"]["message"] == "dependency would create a cycle"
        assert _depend(c, a, a).status_code == 400
        assert _depend(c, a, other).status_code == 400  # another project's job
        assert _depend(c, a, "not-a-uuid").status_code == 400
        assert _depend(c, a, "0190a000-0000-7000-8000-000000000000").status_code == 400  # no such job
        for body in ({}, {"depends_on_job_id": 5}, {"depends_on_job_id": x, "condition": "maybe"}):
            assert c.post(f"/v1/jobs/{a}/dependencies", json=body).status_code == 422
        assert c.post(f"/v1/jobs/{a}/dependencies", json={"depends_on_job_id": x, "extra": 1}).status_code == 400
        listed = c.get(f"/v1/jobs/{b}/dependencies").json()["data"]
        assert [d["id"] for d in listed] == [dep["id"]]
        assert c.delete(f"/v1/jobs/{b}/dependencies/{dep['id']}").status_code == 204
        assert c.delete(f"/v1/jobs/{b}/dependencies/{dep['id']}").status_code == 404
        assert c.get(f"/v1/jobs/{b}").json()["has_dependencies"] is False
        assert c.get(f"/v1/jobs/{x}/dependencies").json()["data"][0]["depends_on_job_id"] == b


def test_a_dependent_run_waits_for_its_upstream_run_with_the_same_key(strait: Server, endpoint: Endpoint) -> None:
    order: list[str] = []

    def behave(seen: dict[str, Any]) -> Any:
        order.append(json.loads(seen["body"] or b"{}").get("step", ""))
        return None

    endpoint.behave = behave
    with strait.client("p") as c:
        _setup(c)
        up, down = _job(c, "up", endpoint.url), _job(c, "down", endpoint.url)
        assert _depend(c, down, up).status_code == 201
        d1 = _trigger(c, down, payload={"step": "down-1", "dependency_key": "k1"})
        d2 = _trigger(c, down, payload={"step": "down-2", "dependency_key": "k2"})
        assert d1["status"] == d2["status"] == "waiting"
        status = c.get(f"/v1/runs/{d1['id']}/dependency-status").json()
        assert status["waiting_on_dependencies"] is True and [d["met"] for d in status["dependencies"]] == [False]
        u1 = _trigger(c, up, payload={"step": "up-1", "dependency_key": "k1"})
        wait_for(lambda: _status(c, d1["id"]) == "completed", what="down-1 released by up-1 and completed")
        assert _status(c, u1["id"]) == "completed" and _status(c, d2["id"]) == "waiting"
        assert order.index("up-1") < order.index("down-1") and "down-2" not in order
        assert c.get(f"/v1/runs/{d1['id']}/dependencies").json()["dependencies"][0]["met"] is True
        events = c.get(f"/v1/runs/{d1['id']}/events").json()["data"]
        assert any(e["message"] == "waiting -> queued (dependencies met)" for e in events)
        # met already: a new run of the same key is queued at once
        again = _trigger(c, down, payload={"step": "down-1b", "dependency_key": "k1"})
        assert again["status"] == "queued"
        # an idempotency key is a run's key too (it wins over the payload's)
        r = c.post(f"/v1/jobs/{down}/trigger", json={"payload": {"step": "down-3"}}, headers={"Idempotency-Key": "i3"})
        assert r.status_code == 201 and r.json()["status"] == "waiting"
        c.post(f"/v1/jobs/{up}/trigger", json={"payload": {"step": "up-3"}}, headers={"Idempotency-Key": "i3"})
        wait_for(lambda: _status(c, r.json()["id"]) == "completed", what="down-3 released by up-3")
        assert _status(c, d2["id"]) == "waiting"


def test_conditions_and_several_dependencies(strait: Server, endpoint: Endpoint) -> None:
    with strait.client("p") as c:
        _setup(c)
        a, b = _job(c, "a", endpoint.url, max_attempts=1), _job(c, "b", endpoint.url)
        on_fail, on_any, both = (_job(c, s, endpoint.url) for s in ("on-fail", "on-any", "both"))
        endpoint.behave = _fails_job(a)
        assert _depend(c, on_fail, a, "failed").status_code == 201
        assert _depend(c, on_any, a, "any").status_code == 201
        assert _depend(c, both, a, "failed").status_code == 201
        assert _depend(c, both, b).status_code == 201
        runs = {j: _trigger(c, j, payload={"dependency_key": "n"})["id"] for j in (on_fail, on_any, both)}
        _trigger(c, a, payload={"dependency_key": "n"})  # dead-lettered: a failure
        wait_for(lambda: _status(c, runs[on_fail]) == "completed", what="the failed-condition run released")
        wait_for(lambda: _status(c, runs[on_any]) == "completed", what="the any-condition run released")
        assert _status(c, runs[both]) == "waiting"  # b has not run yet
        _trigger(c, b, payload={"dependency_key": "n"})
        wait_for(lambda: _status(c, runs[both]) == "completed", what="released once both are met")
        # a completes now: a failed-condition run of the same key waits for a later failure
        endpoint.behave = None
        _trigger(c, a, payload={"dependency_key": "m"})
        wait_for(lambda: c.get("/v1/runs", params={"job_id": a, "status": "completed"}).json()["data"], what="a ok")
        late = _trigger(c, on_fail, payload={"dependency_key": "m"})
        assert late["status"] == "waiting"


def test_a_wait_past_its_ttl_fails_and_the_backstop_releases_what_no_statement_saw(
    strait: Server, endpoint: Endpoint
) -> None:
    with strait.client("p") as c:
        _setup(c)
        up, down = _job(c, "up", endpoint.url), _job(c, "down", endpoint.url)
        assert _depend(c, down, up).status_code == 201
        doomed = _trigger(c, down, payload={"dependency_key": "never"}, ttl_secs=1)
        assert doomed["status"] == "waiting"
        wait_for(lambda: _status(c, doomed["id"]) == "failed", what="the wait failed at its TTL")
        run = c.get(f"/v1/runs/{doomed['id']}").json()
        assert run["error_class"] == "dependency" and "not met" in run["error"]
        done = _trigger(c, up, payload={"dependency_key": "late"})["id"]
        wait_for(lambda: _status(c, done) == "completed", what="the upstream run completed")
        lost = _trigger(c, down, payload={"dependency_key": "late"})  # met: queued
        assert lost["status"] == "queued"
        # a wait written as if it had raced the upstream's end (it ended before the wait committed)
        with psycopg.connect(strait.env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(
                "INSERT INTO job_runs (id, job_id, project_id, status, payload, payload_hash, metadata,"
                " awaits_dependencies) VALUES (gen_random_uuid(), %s, 'p', 'waiting', '{}', 'h',"
                ' \'{"dependency_key": "late"}\', true)',
                (down,),
            )
        wait_for(
            lambda: c.get("/v1/runs", params={"job_id": down, "status": "completed"}).json()["data"].__len__() == 2,
            what="the backstop released the raced wait",
        )


def test_many_dependents_released_together_under_concurrent_triggers(strait: Server, endpoint: Endpoint) -> None:
    with strait.client("p") as c:
        _setup(c)
        up, down = _job(c, "up", endpoint.url), _job(c, "down", endpoint.url)
        assert _depend(c, down, up, "any").status_code == 201

    async def storm() -> list[str]:
        headers = {"Authorization": f"Bearer {SECRET}", "X-Project-Id": "p"}
        async with httpx.AsyncClient(base_url=strait.base, headers=headers, timeout=60) as ac:

            async def one(job: str, i: int) -> str:
                r = await ac.post(f"/v1/jobs/{job}/trigger", json={"payload": {"dependency_key": "all", "i": i}})
                assert r.status_code == 201, r.text
                return str(r.json()["id"])

            downs = [one(down, i) for i in range(120)]
            ups = [one(up, i) for i in range(3)]
            return (await asyncio.gather(*downs, *ups))[:120]

    ids = asyncio.run(storm())
    with strait.client("p") as c:
        wait_for(
            lambda: all(_status(c, i) == "completed" for i in ids), timeout=60, what="every dependent run released"
        )


def test_the_ending_statement_itself_releases_its_dependents(dsn: str) -> None:
    """No server, no Reaper: the upstream run's transition (here the expiry pass) queues the
    dependent runs whose key it matches, in its own statement, with their event and a wake."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        up, down, other = (make_job(conn, "http://x/") for _ in range(3))
        conn.execute(
            "INSERT INTO job_dependencies (id, job_id, depends_on_job_id, condition)"
            " VALUES (gen_random_uuid(), %s, %s, 'any'), (gen_random_uuid(), %s, %s, 'completed')",
            (down, up, other, up),
        )
        (ended,) = make_runs(
            conn, up, 1, expires_at=datetime.now(UTC) - timedelta(seconds=1), metadata='{"dependency_key": "k"}'
        )
        match, miss = (
            make_runs(
                conn, down, 1, status="waiting", awaits_dependencies=True, metadata=f'{{"dependency_key": "{k}"}}'
            )[0]
            for k in ("k", "j")
        )
        (picky,) = make_runs(
            conn, other, 1, status="waiting", awaits_dependencies=True, metadata='{"dependency_key": "k"}'
        )
        conn.execute("LISTEN strait_queue_wake")
        assert queue.expire_runs(conn) == 1
        status = dict(conn.execute("SELECT id::text, status FROM job_runs").fetchall())
        assert status[ended] == "expired" and status[match] == "queued"
        assert status[miss] == "waiting"  # another key
        assert status[picky] == "waiting"  # asks for completed; the upstream expired
        events = conn.execute("SELECT message FROM run_events WHERE run_id = %s", (match,)).fetchall()
        assert events == [("waiting -> queued (dependencies met)",)]
        assert list(conn.notifies(timeout=1, stop_after=1))


def test_an_upstream_retry_releases_nothing_its_final_end_does(dsn: str) -> None:
    """An outcome write that sends the upstream run back to the queue (a retry) is not an end: even
    an `any`-condition dependent keeps waiting. The write of its last attempt releases it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        up, down = make_job(conn, "http://x/"), make_job(conn, "http://x/")
        conn.execute(
            "INSERT INTO job_dependencies (id, job_id, depends_on_job_id, condition)"
            " VALUES (gen_random_uuid(), %s, %s, 'any')",
            (down, up),
        )
        (waiting,) = make_runs(
            conn, down, 1, status="waiting", awaits_dependencies=True, metadata='{"dependency_key": "k"}'
        )
        make_runs(conn, up, 1, metadata='{"dependency_key": "k"}')
        claims = queue.Queue(conn, worker_id="w", lease_secs=30)

        def write(status: str) -> None:
            (run,) = claims.claim(1).runs
            outcome = Outcome(run.id, run.attempt, run.lease_id, status, None, "endpoint returned 503", "server",
                              0.0, 0)  # fmt: skip

            async def go() -> set[str]:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
                    return await queue.record_outcomes(aconn, [outcome])

            assert asyncio.run(go()) == {run.id}

        def down_status() -> str:
            return str(conn.execute("SELECT status FROM job_runs WHERE id = %s", (waiting,)).fetchone()[0])  # type: ignore[index]

        write("queued")  # a retry, due at once
        assert down_status() == "waiting"
        write("dead_letter")
        assert down_status() == "queued"


def test_every_way_into_the_queue_passes_the_gate(dsn: str) -> None:
    """Not only triggers (migration 0012): a delayed run coming due, a cron tick, a spawn, a
    continuation and a replay of a dependent job wait while the dependency is unmet, keyed as a
    trigger is; the upstream run's end releases them all; once met, the same paths queue at once."""
    now = datetime.now(UTC)
    key = '{"dependency_key": "k"}'
    with psycopg.connect(dsn, autocommit=True) as conn:
        up, free = make_job(conn, "http://x/"), make_job(conn, "http://x/")
        down = make_job(
            conn,
            "http://x/",
            has_dependencies=True,
            cron="* * * * *",
            next_fire_at=now - timedelta(seconds=1),
            default_run_metadata=key,
        )
        conn.execute(
            "INSERT INTO job_dependencies (id, job_id, depends_on_job_id, condition)"
            " VALUES (gen_random_uuid(), %s, %s, 'any')",
            (down, up),
        )
        due = now - timedelta(seconds=1)
        delayed = make_runs(conn, down, 1, status="delayed", scheduled_at=due, metadata=key)[0]
        other_key = make_runs(conn, down, 1, status="delayed", scheduled_at=due, metadata='{"dependency_key": "j"}')[0]
        control = make_runs(conn, free, 1, status="delayed", scheduled_at=due)[0]
        assert queue.Queue(conn, worker_id="w", lease_secs=30).claim(10).runs == []  # promoted, none claimable yet
        [tick] = schedules.fire_due(conn, now)
        assert tick.skipped is None and tick.run_id is not None
        lease = uuid.uuid4()
        (parent,) = make_runs(conn, down, 1, status="executing", lease_id=lease, metadata=key)
        (ended,) = make_runs(conn, down, 1, status="failed", metadata=key)

        def made(name: str, params: dict[str, Any]) -> str:
            row = conn.execute(q(name), params).fetchone()
            assert row is not None, name
            return str(row[0])

        token = {"parent_id": parent, "attempt": 1, "lease_id": lease, "actor": None}
        spawn = {
            "job_id": down,
            "payload": "{}",
            "payload_hash": "h",
            "priority": 0,
            "await": False,
            "timeout_secs": 60,
        }

        def spawned_child() -> str:
            return made("sdk_spawn", {**token, **spawn, "child_id": uuid.uuid4(), "trigger_id": uuid.uuid4()})

        spawned = spawned_child()
        continued = made(
            "sdk_continue", {**token, "new_id": uuid.uuid4(), "payload": None, "payload_hash": None, "max_depth": 10}
        )
        replayed = made("replay_run", {"id": ended, "new_id": uuid.uuid4(), "actor": "t"})
        gated = [delayed, other_key, tick.run_id, spawned, continued, replayed]

        def state() -> dict[str, tuple[str, bool]]:
            rows = conn.execute("SELECT id::text, status, awaits_dependencies FROM job_runs").fetchall()
            return {r[0]: (r[1], r[2]) for r in rows}

        now_state = state()
        assert [now_state[r] for r in gated] == [("waiting", True)] * 6
        assert now_state[control] == ("queued", False)
        # the upstream run ends (expires; the dependency takes any end): its statement releases those of key k
        make_runs(conn, up, 1, expires_at=datetime.now(UTC) - timedelta(seconds=1), metadata=key)
        assert queue.expire_runs(conn) == 1
        now_state = state()
        assert now_state[other_key] == ("waiting", True)  # another key: still waits
        assert [now_state[r] for r in gated if r != other_key] == [("queued", False)] * 5
        # met now: the same paths queue at once
        again = spawned_child()
        assert state()[again] == ("queued", False)


def test_delayed_and_windowed_runs_wait_for_their_dependencies(strait: Server, endpoint: Endpoint) -> None:
    """End to end: a delayed trigger, a debounced run and a batch wait once due or flushed, and are
    released (then dispatched) by the upstream run of their key."""
    with strait.client("p") as c:
        _setup(c)
        up = _job(c, "up", endpoint.url)
        delayed, debounced, batched = (
            _job(c, "delayed", endpoint.url),
            _job(c, "debounced", endpoint.url, debounce_window_secs=1),
            _job(c, "batched", endpoint.url, batch_window_secs=600, batch_max_size=2),
        )
        for job in (delayed, debounced, batched):
            assert _depend(c, job, up).status_code == 201
        soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        runs = [
            _trigger(c, delayed, payload={"dependency_key": "k"}, scheduled_at=soon),
            _trigger(c, debounced, payload={"dependency_key": "k"}, debounce_key="d"),
            _trigger(c, batched, payload={"dependency_key": "k"}),
        ]
        filled = _trigger(c, batched, payload={"dependency_key": "k", "n": 2})  # fills the batch: flushed
        assert filled["id"] == runs[2]["id"] and filled["status"] == "waiting"
        ids = [r["id"] for r in runs]
        wait_for(lambda: all(_status(c, r) == "waiting" for r in ids), what="every run waits once due")
        assert not endpoint.run_ids()
        for r in ids:
            assert c.get(f"/v1/runs/{r}/dependency-status").json()["waiting_on_dependencies"] is True
        _trigger(c, up, payload={"dependency_key": "k"})
        wait_for(lambda: all(_status(c, r) == "completed" for r in ids), what="released and dispatched")
