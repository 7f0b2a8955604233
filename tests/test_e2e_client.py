"""End to end through the official client `strait-python` only (api.md §11): a real server, a real
endpoint, and nothing but `strait.Client` calls (plus raw httpx where the client hides a status code)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from strait import ApiError, Client, ConflictError, NotFoundError, UnauthorizedError

from tests.client_helpers import admin_client, make_job, wait_terminal
from tests.conftest import JWT_KEY, Endpoint, Server, wait_for

HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---- bootstrap ------------------------------------------------------------------------------------


def test_health_project_and_api_key(strait: Server) -> None:
    with admin_client(strait) as admin:
        assert admin.health.list()["status"] == "ok"
        assert admin.health.get_ready()["status"] == "ready"
        project = admin.projects.create({"id": "p1", "org_id": "o1", "name": "P1"})
        assert (project["id"], project["org_id"], project["name"]) == ("p1", "o1", "P1")
        key = admin.api_keys.create({"project_id": "p1", "name": "k", "scopes": ["*"]})
    assert re.fullmatch(r"strait_[0-9a-f]{64}", key["key"]), key["key"]
    assert key["key_prefix"] == key["key"][:12]
    assert key["project_id"] == "p1" and key["scopes"] == ["*"] and key["id"]
    with Client(base_url=strait.base, api_key=key["key"], retry=None) as c:
        assert c.jobs.list()["data"] == []


# ---- jobs -----------------------------------------------------------------------------------------


def test_job_create_get_list_update_versions(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    job = make_job(c, endpoint, description="v1")
    assert job["version"] == 1 and job["version_id"].startswith("ver_") and job["slug"] == "j"
    assert c.jobs.get(job["id"])["id"] == job["id"]
    listed = c.jobs.list(query={"slug": "j"})
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    assert listed["has_more"] is False and "next_cursor" not in listed
    assert c.jobs.list(query={"slug": "other"})["data"] == []

    updated = c.jobs.update(job["id"], {"description": "v2"})
    assert updated["version"] == 2 and updated["description"] == "v2"
    assert updated["version_id"] != job["version_id"]
    assert c.jobs.get(job["id"])["version"] == 2

    versions = c.jobs.list_versions(job["id"])
    assert [v["version"] for v in versions["data"]] == [1] and versions["has_more"] is False
    snapshot = versions["data"][0]
    assert snapshot["version_id"] == job["version_id"] and snapshot["job_id"] == job["id"]
    got = c.jobs.get_version(job["id"], snapshot["version_id"])
    assert got["version"] == 1 and got["description"] == "v1" and got["version_id"] == job["version_id"]


def test_pagination_follows_cursor_newest_first(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    created = [make_job(c, endpoint, slug=f"j{i}")["id"] for i in range(5)]
    seen: list[str] = []
    pages = 0
    query = {"limit": "2"}
    while True:
        page = c.jobs.list(query=query)
        pages += 1
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            assert "next_cursor" not in page
            break
        query = {"limit": "2", "cursor": page["next_cursor"]}
        assert pages < 10, "pagination does not end"
    assert pages == 3
    assert seen == list(reversed(created)), "every job exactly once, newest first"


def test_job_delete_conflicts_with_a_live_run(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    job = make_job(c, endpoint)
    later = iso(datetime.now(UTC) + timedelta(hours=1))
    run = c.jobs.trigger(job["id"], {"payload": {}, "scheduled_at": later})
    assert run["status"] == "delayed"
    with pytest.raises(ConflictError) as info:
        c.jobs.delete(job["id"])
    assert info.value.status == 409
    assert c.runs.delete(run["id"])["status"] == "canceled"
    assert c.jobs.delete(job["id"]) == {}
    with pytest.raises(NotFoundError):
        c.jobs.get(job["id"])


# ---- trigger and dispatch -------------------------------------------------------------------------


def test_trigger_dispatches_canonical_payload_with_headers(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    answer = {"answer": 42, "nested": {"k": [1, 2]}}
    endpoint.behave = lambda seen: answer
    job = make_job(c, endpoint)
    payload = {"b": 1, "a": {"d": [1, 2], "c": "x"}}
    receipt = c.jobs.trigger(job["id"], {"payload": payload})
    assert set(receipt) == {"id", "status", "payload_hash", "idempotency_hit"}
    assert receipt["status"] == "queued" and receipt["idempotency_hit"] is False
    assert HEX64.match(receipt["payload_hash"])
    assert receipt["payload_hash"] == hashlib.sha256(canonical(payload)).hexdigest()

    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "completed", json.dumps(run)
    assert run["result"] == answer and run["attempt"] == 1
    assert run["finished_at"] and run["completed_at"] == run["finished_at"]
    assert run["payload"] == payload and run["job_id"] == job["id"]

    (req,) = endpoint.requests
    assert req["body"] == b'{"a":{"c":"x","d":[1,2]},"b":1}'
    headers = req["headers"]
    assert headers["X-Run-ID"] == receipt["id"] and headers["X-Job-ID"] == job["id"]
    assert headers["X-Attempt"] == "1"
    assert headers["Content-Type"].startswith("application/json")
    claims = jwt.decode(headers["X-Run-Token"], JWT_KEY, algorithms=["HS256"])
    assert claims["iss"] == "strait:run-token" and claims["sub"] == receipt["id"] and claims["attempt"] == 1
    assert "X-Strait-Signature" not in headers, "no signing secret, no signature"


def test_dispatch_is_signed_with_the_webhook_secret(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    secret = "whsec-0123456789abcdef"
    job = make_job(c, endpoint, webhook_secret=secret)
    assert "webhook_secret" not in job and "endpoint_signing_secret" not in job
    receipt = c.jobs.trigger(job["id"], {"payload": {"hello": "world"}})
    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "completed", json.dumps(run)
    (req,) = endpoint.requests
    ts = req["headers"]["X-Strait-Timestamp"]
    assert ts.isdigit() and abs(int(ts) - time.time()) < 60
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + req["body"], hashlib.sha256).hexdigest()
    assert req["headers"]["X-Strait-Signature"] == f"v1={expected}"


def test_server_errors_are_retried_then_dead_lettered_and_replayable(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    endpoint.behave = lambda seen: web.json_response({"boom": True}, status=500)
    job = make_job(c, endpoint, max_attempts=2)
    receipt = c.jobs.trigger(job["id"], {"payload": {"n": 1}})
    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "dead_letter", run
    assert (run["error"], run["error_class"], run["attempt"]) == ("endpoint returned 500", "server", 2)
    assert [r["headers"]["X-Attempt"] for r in endpoint.requests] == ["1", "2"]
    assert endpoint.run_ids() == [receipt["id"]] * 2

    assert receipt["id"] in [r["id"] for r in c.runs.get_dlq()["data"]]
    replayed = c.runs.dlq_replay(receipt["id"])
    assert (replayed["id"], replayed["status"], replayed["attempt"]) == (receipt["id"], "queued", 1)
    wait_for(
        lambda: len(endpoint.requests) == 4 and c.runs.get(receipt["id"])["status"] == "dead_letter",
        20,
        what="the replayed run dead-letters again",
    )
    assert [r["headers"]["X-Attempt"] for r in endpoint.requests] == ["1", "2", "1", "2"]


def test_client_errors_are_not_retried(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    endpoint.behave = lambda seen: web.json_response({"bad": True}, status=400)
    job = make_job(c, endpoint, max_attempts=3)
    receipt = c.jobs.trigger(job["id"], {"payload": {}})
    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "dead_letter", run
    assert (run["error"], run["error_class"], run["attempt"]) == ("endpoint returned 400", "client", 1)
    assert len(endpoint.requests) == 1


def test_custom_retry_delays_are_honoured(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    endpoint.behave = lambda seen: (
        web.json_response({}, status=503) if len(endpoint.requests) <= 2 else {"third": "time"}
    )
    job = make_job(c, endpoint, max_attempts=3, retry_strategy="custom", retry_delays_secs=[1])
    receipt = c.jobs.trigger(job["id"], {"payload": {}})
    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "completed" and run["attempt"] == 3 and run["result"] == {"third": "time"}, run
    at = [r["at"] for r in endpoint.requests]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert len(gaps) == 2
    assert all(0.7 <= g < 3.0 for g in gaps), f"custom delay 1 s ± 20 %, got gaps {gaps}"


def test_idempotent_trigger_body_key_and_header(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, key = clients
    job = make_job(c, endpoint)
    first = c.jobs.trigger(job["id"], {"payload": {"a": 1}, "idempotency_key": "k1"})
    assert first["idempotency_hit"] is False
    again = c.jobs.trigger(job["id"], {"payload": {"a": 1}, "idempotency_key": "k1"})
    assert again["idempotency_hit"] is True and again["id"] == first["id"]
    raw = httpx.post(
        f"{strait.base}/v1/jobs/{job['id']}/trigger",
        json={"payload": {"a": 1}, "idempotency_key": "k1"},
        headers={"Authorization": f"Bearer {key['key']}"},
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["id"] == first["id"] and raw.json()["idempotency_hit"] is True

    with Client(
        base_url=strait.base, api_key=key["key"], retry=None, default_headers={"Idempotency-Key": "h1"}
    ) as with_header:
        by_header = with_header.jobs.trigger(job["id"], {"payload": {}, "idempotency_key": "b1"})
        repeat = with_header.jobs.trigger(job["id"], {"payload": {}, "idempotency_key": "other"})
    assert by_header["idempotency_hit"] is False and by_header["id"] != first["id"]
    assert repeat["idempotency_hit"] is True and repeat["id"] == by_header["id"], "the header wins"
    body_only = c.jobs.trigger(job["id"], {"payload": {}, "idempotency_key": "b1"})
    assert body_only["idempotency_hit"] is False, "b1 was not used: the header key was"
    assert c.runs.get(by_header["id"])["idempotency_key"] == "h1"


def test_delayed_run_cancel(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    job = make_job(c, endpoint)
    receipt = c.jobs.trigger(job["id"], {"payload": {}, "scheduled_at": iso(datetime.now(UTC) + timedelta(hours=1))})
    assert receipt["status"] == "delayed"
    canceled = c.runs.delete(receipt["id"])
    assert canceled["status"] == "canceled" and canceled["id"] == receipt["id"]
    with pytest.raises(ApiError) as info:
        c.runs.delete(receipt["id"])
    assert info.value.status == 400
    assert endpoint.requests == []


def test_delayed_run_is_dispatched_when_due(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    job = make_job(c, endpoint)
    due = datetime.now(UTC) + timedelta(seconds=2)
    receipt = c.jobs.trigger(job["id"], {"payload": {}, "scheduled_at": iso(due)})
    assert receipt["status"] == "delayed"
    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "completed", json.dumps(run)
    (req,) = endpoint.requests
    assert req["at"] >= due.timestamp(), f"dispatched {due.timestamp() - req['at']:.3f} s early"


def test_bulk_trigger(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    job = make_job(c, endpoint)
    bulk = c.jobs.bulk_trigger(job["id"], {"items": [{"payload": {"i": i}} for i in range(3)]})
    assert bulk["total"] == 3 and bulk["created"] == 3 and bulk["batch_id"]
    ids = [r["id"] for r in bulk["results"]]
    assert len(set(ids)) == 3 and not any(r["idempotency_hit"] for r in bulk["results"])
    assert [c.runs.get(i)["payload"] for i in ids] == [{"i": 0}, {"i": 1}, {"i": 2}], "input order"
    listed = c.runs.list(query={"batch_id": bulk["batch_id"]})
    assert sorted(r["id"] for r in listed["data"]) == sorted(ids)
    assert all(r["batch_id"] == bulk["batch_id"] for r in listed["data"])

    existing = c.jobs.trigger(job["id"], {"payload": {"x": 1}, "idempotency_key": "dup"})
    second = c.jobs.bulk_trigger(
        job["id"], {"items": [{"payload": {"new": 1}}, {"payload": {"x": 1}, "idempotency_key": "dup"}]}
    )
    assert second["total"] == 2 and second["created"] == 1
    assert second["results"][1] == {
        "id": existing["id"],
        "status": second["results"][1]["status"],
        "idempotency_hit": True,
    }
    assert second["results"][0]["idempotency_hit"] is False and second["results"][0]["id"] != existing["id"]


def test_run_events_tell_the_lifecycle(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    job = make_job(c, endpoint)
    receipt = c.jobs.trigger(job["id"], {"payload": {}})
    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "completed", json.dumps(run)
    events = c.runs.list_events(receipt["id"])["data"]
    assert all(e["run_id"] == receipt["id"] for e in events)
    stamps = [e["created_at"] for e in events]
    assert stamps == sorted(stamps), "oldest first"
    changes = [
        (e["data"]["from"], e["data"]["to"], e["data"]["attempt"]) for e in events if e["type"] == "state_change"
    ]
    assert changes == [("queued", "executing", 1), ("executing", "completed", 1)]


def test_replay_of_a_non_replayable_run_is_400(clients: Any, endpoint: Endpoint) -> None:
    _, c, _ = clients
    job = make_job(c, endpoint)
    receipt = c.jobs.trigger(job["id"], {"payload": {}})
    run = wait_terminal(c, receipt["id"])
    assert run["status"] == "completed", json.dumps(run)
    with pytest.raises(ApiError) as info:
        c.runs.replay(receipt["id"])
    assert info.value.status == 400 and "not replayable" in str(info.value)


# ---- keys -----------------------------------------------------------------------------------------


def test_revoked_key_is_refused(clients: Any, strait: Server) -> None:
    _, c, key = clients
    assert c.jobs.list()["data"] == []
    with strait.client() as raw:
        r = raw.delete(f"/v1/api-keys/{key['id']}")
        assert r.status_code == 200, r.text

    def refused() -> bool:
        try:
            c.jobs.list()
        except UnauthorizedError as exc:
            return exc.status == 401
        return False

    wait_for(refused, 6.5, interval=0.2, what="the revoked key is refused")


def test_scopes_gate_routes(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    admin, c, _ = clients
    job = make_job(c, endpoint)
    reader_key = admin.api_keys.create({"project_id": "p1", "name": "reader", "scopes": ["jobs:read"]})
    with Client(base_url=strait.base, api_key=reader_key["key"], retry=None) as reader:
        assert reader.jobs.get(job["id"])["id"] == job["id"]
        with pytest.raises(UnauthorizedError) as trig:
            reader.jobs.trigger(job["id"], {"payload": {}})
        with pytest.raises(UnauthorizedError) as runs:
            reader.runs.list()
    assert trig.value.status == 403
    assert runs.value.status == 403
    assert c.runs.list()["data"] == [], "the refused trigger created nothing"
