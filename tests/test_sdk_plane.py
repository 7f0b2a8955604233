"""The SDK plane end to end (api.md §1.6, §4.9, §5.5): a real server, a real endpoint whose code
talks back with the official client `strait-python` (its AsyncClient, with the run token the
dispatch carried), and the management plane reading what it wrote."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from strait import ApiError, AsyncClient, Client, UnauthorizedError

from strait_actors import tokens
from tests.client_helpers import make_job, setup, wait_terminal
from tests.conftest import JWT_KEY, Endpoint, Server, start_strait, stop_strait, wait_for

Handler = Callable[[AsyncClient, str, dict[str, Any]], Awaitable[Any]]


def sdk_endpoint(server: Server, endpoint: Endpoint, handler: Handler) -> list[dict[str, Any]]:
    """Make the endpoint run `handler(run_client, run_id, seen)` for each dispatch; what it returns
    is the HTTP answer. Returns the list the handler's exceptions are kept in (for asserts)."""
    errors: list[dict[str, Any]] = []
    shared: list[httpx.AsyncClient] = []

    async def behave(seen: dict[str, Any]) -> Any:
        headers = seen["headers"]
        if not shared:  # one connection pool for every run's client: making one costs ~60 ms of the loop
            # and every connection kept alive: with hundreds of runs calling at once, httpx's default of
            # 20 kept would make the rest reconnect on every call
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            shared.append(httpx.AsyncClient(timeout=30, limits=limits))
            endpoint.closers.append(shared[0].aclose)
        rc = AsyncClient(base_url=server.base, run_token=headers["X-Run-Token"], retry=None, http_client=shared[0])
        try:
            return await handler(rc, headers["X-Run-ID"], seen)
        except Exception as exc:
            errors.append({"exc": exc, "run_id": headers["X-Run-ID"]})
            return web.json_response({"handler_error": repr(exc)}, status=500)
        finally:
            await rc.close()

    endpoint.behave = behave
    return errors


def run_http(server: Server, seen: dict[str, Any]) -> httpx.AsyncClient:
    """Raw HTTP with the dispatched run's token: for statuses and bodies the client maps away."""
    token = seen["headers"]["X-Run-Token"]
    return httpx.AsyncClient(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def sdk_status(server: Server, token: str, run_id: str, call: str = "heartbeat", body: Any = None) -> int:
    """The raw status of one SDK call (the client maps some statuses to one exception type)."""
    r = httpx.post(
        f"{server.base}/sdk/v1/runs/{run_id}/{call}",
        headers={"Authorization": f"Bearer {token}"},
        json=body,
        timeout=10,
    )
    return r.status_code


def test_every_sdk_call_through_the_official_client(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients
    seen_tokens: list[str] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        seen_tokens.append(seen["headers"]["X-Run-Token"])
        s = rc.sdk_runs
        assert (await s.heartbeat_run(run_id)) == {"status": "ok"}
        logged = await s.log_run(run_id, {"level": "info", "message": "hello"})
        assert logged["type"] == "log" and logged["message"] == "hello" and logged["level"] == "info"
        progressed = await s.progress_run(run_id, {"percent": 50})  # no message: optional (§4.9)
        assert progressed["type"] == "progress" and progressed["data"] == {"percent": 50}
        cp = await s.checkpoint_run(run_id, {"state": {"step": 1}, "source": "sdk"})
        assert cp["sequence"] == 1 and cp["state"] == {"step": 1} and cp["source"] == "sdk"
        out = await s.output_run(run_id, {"key": "answer", "value": {"n": 42}})
        assert out["output_key"] == "answer" and out["value"] == {"n": 42}
        st = await s.set_state(run_id, {"key": "cursor", "value": [1, 2]})
        assert st["state_key"] == "cursor" and st["value"] == [1, 2]
        assert (await s.get_state(run_id, "cursor"))["value"] == [1, 2]
        await s.set_state(run_id, {"key": "other", "value": "x"})
        listed = await s.list_state(run_id)
        assert [r["state_key"] for r in listed] == ["cursor", "other"]  # a bare array (§2.1)
        assert (await s.delete_state(run_id, "other")) == {}
        usage = await s.usage_run(run_id, {"provider": "openai", "model": "m", "total_tokens": 12})
        assert usage["total_tokens"] == 12 and usage["cost_microusd"] == 0
        call = await s.tool_call_run(run_id, {"tool_name": "search", "input": {"q": "x"}, "duration_ms": 5})
        assert call["tool_name"] == "search" and call["input"] == {"q": "x"}
        annotated = await s.annotate_run(run_id, {"annotations": {"team": "a"}})
        assert annotated["metadata"]["team"] == "a"
        assert (await s.get_payload(run_id)) == {"mode": "sdk", "x": 1}
        done = await s.complete_run(run_id, {"result": {"from": "sdk"}})
        assert done["status"] == "completed" and done["result"] == {"from": "sdk"}
        return {"ignored": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint)
    run_id = c.jobs.trigger(job["id"], {"payload": {"mode": "sdk", "x": 1}})["id"]
    run = wait_terminal(c, run_id)
    assert not errors, errors
    assert run["status"] == "completed" and run["result"] == {"from": "sdk"}  # the SDK's, not the HTTP body
    assert run["metadata"]["team"] == "a"
    events = c.runs.list_events(run_id)["data"]
    kinds = [(e["type"], e["message"]) for e in events if e["type"] != "state_change"]
    assert kinds == [("log", "hello"), ("progress", "")]
    changes = [(e["data"]["from"], e["data"]["to"]) for e in events if e["type"] == "state_change"]
    assert changes == [("queued", "executing"), ("executing", "completed")]
    cps = c.runs.list_checkpoints(run_id)["data"]
    assert [(x["sequence"], x["state"]) for x in cps] == [(1, {"step": 1})]
    assert [(o["output_key"], o["value"]) for o in c.runs.list_outputs(run_id)["data"]] == [("answer", {"n": 42})]
    assert [(u["provider"], u["total_tokens"]) for u in c.runs.get_usage(run_id)["data"]] == [("openai", 12)]
    assert len(endpoint.requests) == 1
    # after the end, the same token: 410 Gone (§1.6)
    assert sdk_status(strait, seen_tokens[0], run_id) == 410
    with Client(base_url=strait.base, run_token=seen_tokens[0], retry=None) as rc, pytest.raises(ApiError) as gone:
        rc.sdk_runs.heartbeat_run(run_id)
    assert gone.value.status == 410


def test_sdk_fail_ends_failed_without_retry(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        failed = await rc.sdk_runs.fail_run(run_id, {"error": "no good"})
        assert failed["status"] == "failed" and failed["error"] == "no good"
        return web.json_response({"ignored": True}, status=500)

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint, max_attempts=3)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    run = wait_terminal(c, run_id)
    assert not errors, errors
    assert (run["status"], run["error"], run["attempt"]) == ("failed", "no good", 1)
    assert len(endpoint.requests) == 1


def test_run_token_rules(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    """§1.6 in order: header, signature, another run's token, terminal, stale attempt; a refused
    call writes nothing."""
    _, c, _ = clients
    held: dict[str, Any] = {}
    release = asyncio.Event()
    loop_of: list[asyncio.AbstractEventLoop] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        held.setdefault(run_id, []).append(seen["headers"]["X-Run-Token"])
        loop_of[:] = [asyncio.get_running_loop()]
        if seen["headers"]["X-Attempt"] == "1":
            return web.json_response({"retry": True}, status=503)
        await release.wait()
        return {"ok": True}

    sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint, max_attempts=2, retry_strategy="fixed")
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_for(lambda: len(held.get(run_id, [])) == 2, what="second attempt dispatched")
    first, second = held[run_id]
    other = c.jobs.trigger(job["id"], {"payload": {"other": True}})["id"]

    assert httpx.post(f"{strait.base}/sdk/v1/runs/{run_id}/heartbeat", timeout=5).status_code == 401
    forged = jwt.encode(jwt.decode(second, options={"verify_signature": False}), "x" * 32, algorithm="HS256")
    assert sdk_status(strait, forged, run_id) == 401
    assert sdk_status(strait, second, other) == 403
    assert sdk_status(strait, first, run_id) == 401  # attempt 1's token while attempt 2 runs
    assert sdk_status(strait, first, run_id, "log", {"message": "late"}) == 401
    assert sdk_status(strait, second, run_id) == 200
    assert sdk_status(strait, second, run_id, "log", {"message": "bad", "level": "loud"}) == 422
    assert sdk_status(strait, second, run_id, "log", {"message": "x", "extra": 1}) == 400
    with Client(base_url=strait.base, run_token=first, retry=None) as rc, pytest.raises(UnauthorizedError):
        rc.sdk_runs.heartbeat_run(run_id)
    loop_of[0].call_soon_threadsafe(release.set)
    run = wait_terminal(c, run_id)
    assert run["status"] == "completed"
    assert sdk_status(strait, second, run_id) == 410
    messages = [e["message"] for e in c.runs.list_events(run_id)["data"] if e["type"] == "log"]
    assert messages == []  # the refused calls wrote nothing


def test_async_completion_sdk_first_http_result_dropped(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    """§5.5 one way: the endpoint completes through the SDK, then answers 500: the run stays
    completed with the SDK's result, never retried."""
    _, c, _ = clients

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        await rc.sdk_runs.complete_run(run_id, {"result": {"sdk": 1}})
        return web.json_response({"http": 1}, status=500)

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint, max_attempts=3)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    run = wait_terminal(c, run_id)
    assert not errors
    assert (run["status"], run["result"], run["attempt"]) == ("completed", {"sdk": 1}, 1)
    ends = [e for e in c.runs.list_events(run_id)["data"] if e["type"] == "state_change"]
    assert [e["data"]["to"] for e in ends] == ["executing", "completed"]  # exactly one terminal change
    assert len(endpoint.requests) == 1


def test_async_completion_http_first_sdk_late(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    """§5.5 the other way: the HTTP answer is recorded first; the endpoint's later SDK complete and
    fail find a terminal run (410) and change nothing."""
    _, c, _ = clients
    late: list[int] = []

    async def after(token: str, run_id: str) -> None:
        async with httpx.AsyncClient(base_url=strait.base, timeout=10) as h:
            for _ in range(200):
                r = await h.post(f"/sdk/v1/runs/{run_id}/heartbeat", headers={"Authorization": f"Bearer {token}"})
                if r.status_code == 410:
                    break
                await asyncio.sleep(0.05)
            for call, body in (("complete", {"result": {"late": 1}}), ("fail", {"error": "late"})):
                r = await h.post(
                    f"/sdk/v1/runs/{run_id}/{call}", headers={"Authorization": f"Bearer {token}"}, json=body
                )
                late.append(r.status_code)

    tasks: set[asyncio.Task[None]] = set()

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        task = asyncio.get_running_loop().create_task(after(seen["headers"]["X-Run-Token"], run_id))
        tasks.add(task)
        return {"http": 1}

    sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_for(lambda: len(late) == 2, what="the late SDK calls")
    assert late == [410, 410]
    run = c.runs.get(run_id)
    assert (run["status"], run["result"]) == ("completed", {"http": 1})


def test_result_schema_is_enforced_on_complete(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients
    answers: list[Any] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        async with run_http(strait, seen) as h:
            bad = await h.post(f"/sdk/v1/runs/{run_id}/complete", json={"result": {"n": "x"}})
            answers.append((bad.status_code, bad.json()["error"]))
        await rc.sdk_runs.complete_run(run_id, {"result": {"n": 3}})
        return {"http": True}

    sdk_endpoint(strait, endpoint, handler)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    job = make_job(c, endpoint, result_schema=schema)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    run = wait_terminal(c, run_id)
    assert run["result"] == {"n": 3}
    ((status, error),) = answers
    assert status == 422 and error["code"] == "result_schema_validation_failed"
    assert error["details"] and "n" in error["details"][0]


def test_oversize_result_is_413_and_the_run_stays_active(endpoint: Endpoint, dsn: str, tmp_path: Any) -> None:
    server = start_strait({"DATABASE_URL": dsn, "MAX_RESULT_SIZE": "1000"}, tmp_path)
    try:
        admin, c, _ = setup(server)
        admin.close()
        answers: list[int] = []

        async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
            token = seen["headers"]["X-Run-Token"]
            answers.append(sdk_status_async_free(server, token, run_id, {"result": "y" * 2000}))
            answers.append(sdk_status_async_free(server, token, run_id, {"result": "y" * 900}))
            return {"http": True}

        sdk_endpoint(server, endpoint, handler)
        job = make_job(c, endpoint)
        run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
        run = wait_terminal(c, run_id)
        c.close()
        # the run completes in the second call's own statement: its answer reaches the endpoint just after
        wait_for(lambda: len(answers) == 2, what="both complete calls answered")
        assert answers == [413, 200]
        assert run["result"] == "y" * 900
    finally:
        stop_strait(server)


def sdk_status_async_free(server: Server, token: str, run_id: str, body: Any) -> int:
    return sdk_status(server, token, run_id, "complete", body)


def test_a_retried_attempt_is_told_its_newest_checkpoint(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    """api.md §5.2: attempt > 1 with a checkpoint gets X-Last-Checkpoint (ASCII-escaped JSON, so
    any state survives a header) and X-Checkpoint-At; the first attempt gets neither."""
    _, c, _ = clients

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        headers = seen["headers"]
        if headers["X-Attempt"] == "1":
            await rc.sdk_runs.checkpoint_run(run_id, {"state": {"done": 1}, "source": "sdk"})
            await rc.sdk_runs.checkpoint_run(run_id, {"state": {"done": 2, "name": "Zoë 名前"}, "source": "sdk"})
            return web.json_response({"again": True}, status=503)
        return {"checkpoint": json.loads(headers["X-Last-Checkpoint"]), "at": headers.get("X-Checkpoint-At")}

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint, max_attempts=2, retry_strategy="fixed")
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    run = wait_terminal(c, run_id)
    assert not errors, errors
    assert run["status"] == "completed" and run["attempt"] == 2
    assert run["result"]["checkpoint"] == {"done": 2, "name": "Zoë 名前"} and run["result"]["at"].endswith("Z")
    first = endpoint.requests[0]["headers"]
    assert "X-Last-Checkpoint" not in first and "X-Resume-Event-Key" not in first


def test_tokens_of_a_resumed_or_replayed_run_and_expired_tokens(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    """A run back in the queue (resumed by its event, or replayed from the DLQ) refuses writes with
    its old token (409) until it is dispatched again; then the old token is stale (401). An expired
    token is 401 whatever it names."""
    _, c, _ = clients
    tokens_seen: list[str] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        tokens_seen.append(seen["headers"]["X-Run-Token"])
        if seen["headers"].get("X-Resume-Event-Key"):
            return web.json_response({"fail": True}, status=400)  # to the DLQ
        if len(tokens_seen) == 1:
            await rc.sdk_runs.wait_for_event_run(run_id, {"event_key": "replay:1"})
        return {"parked": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint, max_attempts=1)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_for(lambda: c.runs.get(run_id)["status"] == "waiting", what="waiting")
    parked_token = tokens_seen[0]
    assert sdk_status(strait, parked_token, run_id, "log", {"message": "while parked"}) == 201
    c.jobs.update(job["id"], {"enabled": False})  # resumed runs stay queued while the job is disabled
    c.event_triggers.send_event("replay:1", {"payload": {}})
    assert c.runs.get(run_id)["status"] == "queued"
    assert sdk_status(strait, parked_token, run_id) == 409  # queued: not active
    r = httpx.get(f"{strait.base}/sdk/v1/runs/{run_id}/payload", headers={"Authorization": f"Bearer {parked_token}"})
    assert r.status_code == 200 and r.json() == {}
    c.jobs.update(job["id"], {"enabled": True})
    run = wait_terminal(c, run_id)
    assert run["status"] == "dead_letter"
    assert sdk_status(strait, parked_token, run_id) == 410
    c.jobs.update(job["id"], {"enabled": False})
    assert c.runs.dlq_replay(run_id)["status"] == "queued"
    assert sdk_status(strait, tokens_seen[1], run_id) == 409  # the same attempt number, not active
    c.jobs.update(job["id"], {"enabled": True})
    wait_for(lambda: len(tokens_seen) == 3, what="the replayed run dispatched")
    wait_terminal(c, run_id)
    expired = tokens.mint_run_token(
        JWT_KEY,
        run_id,
        1,
        "00000000-0000-0000-0000-000000000000",
        expires_at=None,
        timeout_secs=0,
        now=time.time() - 3600,
    )
    assert sdk_status(strait, expired, run_id) == 401
    assert not errors, errors


def test_management_reads_of_tool_calls_and_pagination(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        for i in range(3):
            await rc.sdk_runs.tool_call_run(run_id, {"tool_name": f"t{i}", "duration_ms": i})
            await rc.sdk_runs.checkpoint_run(run_id, {"state": {"i": i}, "source": "sdk"})
            await rc.sdk_runs.output_run(run_id, {"key": f"k{i}", "value": i})
        await rc.sdk_runs.output_run(run_id, {"output_key": "k1", "value": "replaced"})
        return {"ok": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_terminal(c, run_id)
    assert not errors, errors
    auth = {"Authorization": f"Bearer {c._config.auth.token}"}
    with httpx.Client(base_url=strait.base, headers=auth) as h:
        calls = h.get(f"/v1/runs/{run_id}/tool-calls").json()["data"]
        assert [(t["tool_name"], t["duration_ms"]) for t in calls] == [("t0", 0), ("t1", 1), ("t2", 2)]
        page = h.get(f"/v1/runs/{run_id}/checkpoints", params={"limit": 2}).json()
        assert [x["sequence"] for x in page["data"]] == [3, 2] and page["has_more"] is True
        rest = h.get(f"/v1/runs/{run_id}/checkpoints", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        assert [x["sequence"] for x in rest["data"]] == [1] and rest["has_more"] is False
        outs = h.get(f"/v1/runs/{run_id}/outputs", params={"limit": 2}).json()
        assert [(o["output_key"], o["value"]) for o in outs["data"]] == [("k0", 0), ("k1", "replaced")]
        more = h.get(f"/v1/runs/{run_id}/outputs", params={"limit": 2, "cursor": outs["next_cursor"]}).json()
        assert [o["output_key"] for o in more["data"]] == ["k2"]
