"""Durable waits end to end (api.md §4.8, §5.6; engine.md §6): a run parks on an event through the
SDK, is resumed by `send` (same run, same attempt, the payload as its newest checkpoint and in the
resumed dispatch's headers), times out, or is canceled with its trigger."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import psycopg
import pytest
from strait import AsyncClient, ConflictError, NotFoundError

from tests.client_helpers import PARKED_AND_RESUMED, Gate, make_job, state_changes, wait_terminal
from tests.conftest import SECRET, Endpoint, Server, wait_for
from tests.test_sdk_plane import run_http, sdk_endpoint


def waiting_handler(key: str, timeout: int = 60) -> Any:
    """First dispatch: wait for `key`, then answer 200 (dropped: the run waits). A resumed dispatch
    (it carries X-Resume-Event-Key) answers with what it was resumed with."""

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        headers = seen["headers"]
        if "X-Resume-Event-Key" in headers:
            return {
                "resumed_by": headers["X-Resume-Event-Key"],
                "checkpoint": json.loads(headers.get("X-Last-Checkpoint", "null")),
                "checkpoint_at": headers.get("X-Checkpoint-At"),
                "attempt": headers["X-Attempt"],
            }
        answer = await rc.sdk_runs.wait_for_event_run(run_id, {"event_key": key, "timeout_secs": timeout})
        assert answer["status"] == "waiting" and answer["event_key"] == key and answer["trigger_id"]
        return {"first": True}

    return handler


def test_wait_then_send_resumes_the_same_run(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients
    errors = sdk_endpoint(strait, endpoint, waiting_handler("evt:1"))
    job = make_job(c, endpoint)
    run_id = c.jobs.trigger(job["id"], {"payload": {"mode": "wait"}})["id"]
    wait_for(lambda: c.runs.get(run_id)["status"] == "waiting", what="run waiting")
    waiting = c.event_triggers.list_events(query={"status": "waiting"})["data"]
    assert [(t["event_key"], t["job_run_id"], t["source_type"]) for t in waiting] == [("evt:1", run_id, "job_run")]
    sent = c.event_triggers.send_event("evt:1", {"payload": {"ok": True}})
    assert sent["status"] == "received" and sent["response_payload"] == {"ok": True}
    run = wait_terminal(c, run_id)
    assert not errors, errors
    assert run["status"] == "completed" and run["attempt"] == 1
    assert run["result"]["resumed_by"] == "evt:1" and run["result"]["checkpoint"] == {"ok": True}
    assert run["result"]["attempt"] == "1" and run["result"]["checkpoint_at"]
    assert [r["headers"]["X-Run-ID"] for r in endpoint.requests] == [run_id, run_id]
    tokens = [r["headers"]["X-Run-Token"] for r in endpoint.requests]
    assert tokens[0] != tokens[1]  # a fresh token per dispatch (§1.5)
    cps = c.runs.list_checkpoints(run_id)["data"]
    assert [(cp["source"], cp["state"]) for cp in cps] == [("event_trigger", {"ok": True})]
    assert state_changes(c, run_id) == PARKED_AND_RESUMED
    # the same event again: the trigger, unchanged (idempotent); a different payload: 409
    again = c.event_triggers.send_event("evt:1", {"payload": {"ok": True}})
    assert again["id"] == sent["id"] and again["status"] == "received"
    with pytest.raises(ConflictError):
        c.event_triggers.send_event("evt:1", {"payload": {"ok": False}})
    assert len(endpoint.requests) == 2
    # the key stays taken for the trigger's whole life (engine.md §6)
    assert c.event_triggers.get_event("evt:1")["status"] == "received"


def test_an_event_sent_while_the_parking_call_goes_on_resumes_the_run_once_that_call_returned(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    """The run is dispatched again only after the call that parked it has returned (migration 0016):
    no second dispatch runs beside the first, whose token stays good until it returns."""
    _, c, _ = clients
    gate = Gate()
    after_send: list[int] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        headers = seen["headers"]
        if "X-Resume-Event-Key" in headers:
            return {"resumed_by": headers["X-Resume-Event-Key"], "checkpoint": json.loads(headers["X-Last-Checkpoint"])}
        await rc.sdk_runs.wait_for_event_run(run_id, {"event_key": "evt:open", "timeout_secs": 60})
        await gate.wait()  # the event is sent meanwhile
        async with run_http(strait, seen) as h:
            r = await h.post(f"/sdk/v1/runs/{run_id}/log", json={"message": "still going"})
            after_send.append(r.status_code)
        return {"first": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_for(lambda: gate.bound, what="the call parked its run")
    assert c.event_triggers.send_event("evt:open", {"payload": {"n": 1}})["status"] == "received"
    # a send resumes its run in its own statement: answered, it has decided (held: the call goes on)
    assert c.runs.get(run_id)["status"] == "waiting" and len(endpoint.requests) == 1
    gate.open()
    run = wait_terminal(c, run_id)
    assert not errors, errors
    assert after_send == [201]
    assert run["status"] == "completed" and run["result"] == {"resumed_by": "evt:open", "checkpoint": {"n": 1}}
    assert len(endpoint.requests) == 2


def test_wait_times_out(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients
    sdk_endpoint(strait, endpoint, waiting_handler("evt:late", timeout=1))
    job = make_job(c, endpoint)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    run = wait_terminal(c, run_id)
    assert (run["status"], run["error"]) == ("timed_out", "event trigger timed out")
    trigger = c.event_triggers.get_event("evt:late")
    assert (trigger["status"], trigger["error"]) == ("timed_out", "event trigger timed out")
    with pytest.raises(ConflictError):
        c.event_triggers.send_event("evt:late", {"payload": {}})
    assert len(endpoint.requests) == 1


def test_cancel_a_wait_cancels_its_run_and_canceling_the_run_closes_the_wait(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    _, c, _ = clients
    keys = iter(["evt:a", "evt:b"])
    sdk_endpoint(strait, endpoint, lambda rc, run_id, seen: waiting_handler(next(keys))(rc, run_id, seen))
    job = make_job(c, endpoint)
    first = c.jobs.trigger(job["id"], {"payload": {"n": 1}})["id"]
    wait_for(lambda: c.runs.get(first)["status"] == "waiting", what="first waiting")
    second = c.jobs.trigger(job["id"], {"payload": {"n": 2}})["id"]
    wait_for(lambda: c.runs.get(second)["status"] == "waiting", what="second waiting")

    canceled = c.event_triggers.delete_event("evt:a")
    assert (canceled["status"], canceled["error"]) == ("canceled", "canceled by user")
    assert c.runs.get(first)["status"] == "canceled"
    c.runs.delete(second)
    assert c.event_triggers.get_event("evt:b")["status"] == "canceled"
    with pytest.raises(ConflictError):
        c.event_triggers.delete_event("evt:b")
    with pytest.raises(NotFoundError):
        c.event_triggers.send_event("evt:none", {"payload": {}})


def test_wait_for_event_rules(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    """Bad keys, timeouts out of range, an unsafe notify_url: 400; a key in use: 409; a run that
    already waits: 409; nothing is half-written (the run stays executing after each refusal)."""
    _, c, _ = clients
    answers: list[tuple[int, str]] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        async with run_http(strait, seen) as h:
            for body in (
                {},
                {"event_key": ""},
                {"event_key": "a\nb"},
                {"event_key": "k" * 513},
                {"event_key": "ok", "timeout_secs": 0},
                {"event_key": "ok", "timeout_secs": 2_592_001},
                {"event_key": "ok", "timeout_secs": "60"},
                {"event_key": "ok", "notify_url": "ftp://x"},
                {"event_key": "ok", "bogus": 1},
                {"event_key": "taken"},
                {"event_key": "mine"},
                {"event_key": "mine2"},
            ):
                r = await h.post(f"/sdk/v1/runs/{run_id}/wait-for-event", json=body)
                answers.append((r.status_code, r.json().get("message", "")))
        return {"done": True}

    sdk_endpoint(strait, endpoint, handler)
    # another run holds "taken"
    job = make_job(c, endpoint)
    holder_answers: list[Any] = []
    endpoint_behave = endpoint.behave

    async def holder(seen: dict[str, Any]) -> Any:
        run_id = seen["headers"]["X-Run-ID"]
        async with run_http(strait, seen) as h:
            r = await h.post(f"/sdk/v1/runs/{run_id}/wait-for-event", json={"event_key": "taken"})
            holder_answers.append(r.status_code)
        return {"parked": True}

    endpoint.behave = holder
    holder_run = c.jobs.trigger(job["id"], {"payload": {"holder": True}})["id"]
    wait_for(lambda: c.runs.get(holder_run)["status"] == "waiting", what="holder waiting")
    endpoint.behave = endpoint_behave
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_for(lambda: len(answers) == 12, what="the handler's calls")
    statuses = [s for s, _ in answers]
    assert statuses == [400, 400, 400, 400, 400, 400, 400, 400, 400, 409, 200, 409], answers
    assert answers[9][1] == "event key already in use"
    assert answers[11][1] == "run must be executing to wait for event, current status: waiting"
    assert holder_answers == [200]
    keys = sorted(t["event_key"] for t in c.event_triggers.list_events()["data"])
    assert keys == ["mine", "taken"]
    assert c.runs.get(run_id)["status"] == "waiting"


def test_send_needs_a_scope_and_a_valid_body(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    admin, c, _ = clients
    sdk_endpoint(strait, endpoint, waiting_handler("evt:s"))
    job = make_job(c, endpoint)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_for(lambda: c.runs.get(run_id)["status"] == "waiting", what="waiting")
    reader = admin.api_keys.create({"project_id": "p1", "name": "r", "scopes": ["jobs:read"]})["key"]
    h = {"Authorization": f"Bearer {reader}"}
    assert httpx.post(f"{strait.base}/v1/events/evt:s/send", headers=h, json={}).status_code == 403
    full = {"Authorization": f"Bearer {c._config.auth.token}"}
    r = httpx.post(f"{strait.base}/v1/events/evt:s/send", headers=full, json={"payload": 1, "extra": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = httpx.post(
        f"{strait.base}/v1/events/evt:s/send", headers={**full, "Content-Type": "application/json"}, content=b"[1]"
    )
    assert r.status_code == 400
    assert c.runs.get(run_id)["status"] == "waiting"  # nothing half-written


def test_a_wait_outlasts_the_run_ttl(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    """The TTL is for runs that never started: a run resumed after its TTL passed is dispatched
    again and completes (found by the waits benchmark: 13 % of 20,000 parked runs expired)."""
    _, c, _ = clients
    errors = sdk_endpoint(strait, endpoint, waiting_handler("evt:ttl"))
    job = make_job(c, endpoint, run_ttl_secs=1)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_for(lambda: c.runs.get(run_id)["status"] == "waiting", what="run waiting")

    def ttl_passed() -> bool:
        with psycopg.connect(strait.env["DATABASE_URL"], autocommit=True) as conn:
            row = conn.execute("SELECT expires_at < now() FROM job_runs WHERE id = %s", (run_id,)).fetchone()
        return bool(row and row[0])

    wait_for(ttl_passed, what="the run's TTL to pass")
    c.event_triggers.send_event("evt:ttl", {"payload": {"late": True}})
    run = wait_terminal(c, run_id)
    assert not errors, errors
    assert (run["status"], run["attempt"], run["result"]["resumed_by"]) == ("completed", 1, "evt:ttl")


def test_concurrent_sends_each_get_their_own_answer(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    """Sends share statements: each still gets its own trigger and status, a key sent twice at
    once with two payloads is delivered once (200 and 409), the same payload twice is idempotent."""
    admin, c, _ = clients

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        key = json.loads(seen["body"])["key"]
        return await waiting_handler(key)(rc, run_id, seen)

    errors = sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint)
    keys = [f"evt:c{i}" for i in range(12)]
    runs = {c.jobs.trigger(job["id"], {"payload": {"key": k}})["id"]: k for k in keys}
    wait_for(lambda: c.runs.list(query={"status": "waiting", "limit": 50})["data"].__len__() == 12, what="parked")
    workflows_only = admin.api_keys.create({"project_id": "p1", "name": "w", "scopes": ["workflows:trigger"]})["key"]
    r = httpx.post(
        f"{strait.base}/v1/events/evt:c11/send", headers={"Authorization": f"Bearer {workflows_only}"}, json={}
    )
    assert r.status_code == 403 and "jobs:trigger" in r.json()["error"]["message"]
    assert c.event_triggers.get_event("evt:c11")["status"] == "waiting"  # nothing delivered

    full = {"Authorization": f"Bearer {c._config.auth.token}"}
    internal = {"Authorization": f"Bearer {SECRET}"}  # no project: the key alone names the trigger
    sends = [(k, {"v": k}, full) for k in keys[:10]]
    sends += [(k, {"v": k}, full) for k in keys[:3]]  # the same event again, at once
    sends += [(k, {"v": "other"}, full) for k in keys[3:6]]  # a different one, at once
    sends += [("evt:none", {}, full), ("evt:c10", {"v": "evt:c10"}, internal), ("evt:c11", {"v": "evt:c11"}, full)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=strait.base, timeout=30) as h:
            return list(
                await asyncio.gather(
                    *[h.post(f"/v1/events/{k}/send", headers=hd, json={"payload": p}) for k, p, hd in sends]
                )
            )

    answers = asyncio.run(send_all())
    by_key: dict[str, list[tuple[int, Any]]] = {}
    for (k, p, _), r in zip(sends, answers, strict=True):
        body = r.json()
        if r.status_code == 200:
            assert body["event_key"] == k and body["status"] == "received" and body["response_payload"] == p
        by_key.setdefault(k, []).append((r.status_code, p))
    assert by_key.pop("evt:none") == [(404, {})]
    for k in keys[:3]:
        assert by_key[k] == [(200, {"v": k}), (200, {"v": k})]
    for k in keys[3:6]:
        assert sorted(s for s, _ in by_key[k]) == [200, 409]
    for k in keys[6:]:
        assert by_key[k] == [(200, {"v": k})]
    for run_id, k in runs.items():
        run = wait_terminal(c, run_id)
        winner = next(p for s, p in by_key[k] if s == 200)
        assert (run["status"], run["result"]["checkpoint"], run["attempt"]) == ("completed", winner, 1)
    assert not errors, errors
    assert len(endpoint.requests) == 24  # each run dispatched twice: parked, then resumed once
