"""Where the original server strayed from its contract, and the review caught it: TTL 0, trace
context on dispatch, duplicate payloads in one bulk request, and the run-events cursor."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.conftest import Endpoint, Server, wait_for
from tests.test_api_errors import base_job, fixtures


def _run(c: Any, run_id: str) -> dict[str, Any]:
    got = c.get(f"/v1/runs/{run_id}")
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def test_a_ttl_of_zero_means_no_ttl_on_every_path(strait: Server, endpoint: Endpoint) -> None:
    fixtures(strait, endpoint)
    with strait.client("p1") as c:
        job = c.post("/v1/jobs", json=base_job(endpoint, run_ttl_secs=0, max_attempts=1, timeout_secs=1)).json()
        other = c.post("/v1/jobs", json=base_job(endpoint, run_ttl_secs=600, max_attempts=1)).json()

        async def answer(seen: dict[str, Any]) -> Any:
            if seen["headers"].get("X-Job-ID") == job["id"]:
                await asyncio.sleep(3)  # past the job's 1 s timeout: the run ends timed_out
            return web.json_response({}, status=400)  # the other job's runs fail for good

        endpoint.behave = answer
        plain = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {}}).json()
        asked = c.post(f"/v1/jobs/{other['id']}/trigger", json={"payload": {}, "ttl_secs": 0}).json()
        timed = c.post(f"/v1/jobs/{other['id']}/trigger", json={"payload": {}}).json()
        dry = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {}, "dry_run": True}).json()
        assert "expires_at" not in dry
        for r in (plain, asked):
            assert _run(c, r["id"]).get("expires_at") is None, "0 = no TTL"
        assert _run(c, timed["id"]).get("expires_at") is not None
        wait_for(lambda: _run(c, plain["id"])["status"] == "timed_out", what="timed out")
        replay = c.post(f"/v1/runs/{plain['id']}/replay")
        assert replay.status_code == 201, replay.text
        assert replay.json().get("expires_at") is None, "a replay of a no-TTL job gets no TTL"
        wait_for(lambda: _run(c, asked["id"])["status"] == "dead_letter", what="dead-lettered")
        c.patch(f"/v1/jobs/{other['id']}", json={"run_ttl_secs": 0}).raise_for_status()
        replayed = c.post(f"/v1/runs/{asked['id']}/dlq-replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json().get("expires_at") is None, "a DLQ replay of a no-TTL job gets no TTL"


def test_trace_context_captured_at_trigger_is_forwarded_on_dispatch(strait: Server, endpoint: Endpoint) -> None:
    fixtures(strait, endpoint)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with strait.client("p1") as c:
        job = c.post("/v1/jobs", json=base_job(endpoint)).json()
        headers = {"Traceparent": parent, "Tracestate": "vendor=1"}
        run = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {}}, headers=headers).json()
    got = wait_for(lambda: [r for r in endpoint.requests if r["headers"].get("X-Run-ID") == run["id"]], what="dispatch")
    assert got[0]["headers"].get("traceparent") == parent
    assert got[0]["headers"].get("tracestate") == "vendor=1"


def test_identical_payloads_in_one_bulk_request_obey_the_dedup_window(strait: Server, endpoint: Endpoint) -> None:
    fixtures(strait, endpoint)
    with strait.client("p1") as c:
        job = c.post("/v1/jobs", json=base_job(endpoint, dedup_window_secs=60)).json()
        items = [{"payload": {"a": 1}}, {"payload": {"b": 2}}, {"payload": {"a": 1}}]
        body = c.post(f"/v1/jobs/{job['id']}/trigger/bulk", json={"items": items}).json()
        ids = [r["id"] for r in body["results"]]
        assert ids[0] == ids[2] != ids[1], body
        assert (body["total"], body["created"]) == (3, 2)
        again = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {"a": 1}}).json()
        assert again["id"] == ids[0], "and a later request finds the same run"
        runs = c.get(f"/v1/runs?job_id={job['id']}").json()["data"]
        assert len(runs) == 2


def test_the_run_events_cursor_is_honoured_in_every_form(strait: Server, endpoint: Endpoint) -> None:
    fixtures(strait, endpoint)
    with strait.client("p1") as c:
        job = c.post("/v1/jobs", json=base_job(endpoint)).json()
        run = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {}}).json()
        wait_for(lambda: _run(c, run["id"])["status"] == "completed", what="completed")
        everything = c.get(f"/v1/runs/{run['id']}/events").json()["data"]
        assert len(everything) >= 2
        for form in ("as given", "timestamp only"):
            seen: list[int] = []
            cursor = None
            for _ in range(10):
                page = c.get(
                    f"/v1/runs/{run['id']}/events", params={"limit": 1, **({"cursor": cursor} if cursor else {})}
                )
                assert page.status_code == 200, page.text
                body = page.json()
                seen += [e["id"] for e in body["data"]]
                if not body["has_more"]:
                    break
                cursor = body["next_cursor"] if form == "as given" else body["next_cursor"].split("|")[0]
            assert seen == [e["id"] for e in everything], form
