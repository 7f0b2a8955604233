"""Debounce and batch windows (README "Debounce and batch windows"), end to end: real strait
processes, real PostgreSQL, a real endpoint that records what it receives."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from strait_actors import windows
from strait_actors.payloads import PayloadError, canonical_payload, loads
from strait_actors.store.queue import Queue
from tests.conftest import SECRET, Endpoint, Server, start_strait, stop_strait, wait_for


def _job(c: httpx.Client, endpoint_url: str, slug: str = "j", **extra: Any) -> str:
    c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"})
    body = {"project_id": "p", "name": "J", "slug": slug, "endpoint_url": endpoint_url, **extra}
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _trigger(c: httpx.Client, job: str, payload: Any, **body: Any) -> dict[str, Any]:
    r = c.post(f"/v1/jobs/{job}/trigger", json={"payload": payload, **body})
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    assert set(answer) == {"id", "status", "payload_hash", "idempotency_hit"}, "the contract's receipt"
    assert answer["payload_hash"] == canonical_payload(payload)[1], "the trigger's own payload's hash"
    assert answer["idempotency_hit"] is False
    return answer


def trigger_all(server: Server, job: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every body as its own trigger request, all in flight at once."""

    async def go() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=len(bodies))
        headers = {"Authorization": f"Bearer {SECRET}", "X-Project-Id": "p"}
        async with httpx.AsyncClient(base_url=server.base, headers=headers, limits=limits, timeout=60) as http:
            answers = await asyncio.gather(*(http.post(f"/v1/jobs/{job}/trigger", json=b) for b in bodies))
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201][:3]
        return [a.json() for a in answers]

    return asyncio.run(go())


def _runs(dsn: str, job: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id::text, status, payload::text AS payload, payload_hash, triggered_by, scheduled_at, created_at,"
            " expires_at, window_key, window_items FROM job_runs WHERE job_id = %s ORDER BY created_at",
            (job,),
        )
        return cur.fetchall()


def _canonical(run: dict[str, Any]) -> None:
    """A stored payload is its own canonical form, and its hash is that text's, as for every run."""
    text, digest = canonical_payload(loads(run["payload"]))
    assert run["payload"] == text.decode()
    assert run["payload_hash"] == digest == hashlib.sha256(run["payload"].encode()).hexdigest()


def _received(endpoint: Endpoint) -> dict[str, Any]:
    """run id -> the payload the endpoint received for it (each run dispatched once)."""
    ids = endpoint.run_ids()
    assert len(ids) == len(set(ids)), f"a run was dispatched twice: {Counter(ids).most_common(3)}"
    return {r["headers"]["X-Run-ID"]: json.loads(r["body"]) for r in endpoint.requests}


def _wait_completed(c: httpx.Client, run_ids: set[str], what: str) -> None:
    wait_for(lambda: all(c.get(f"/v1/runs/{r}").json()["status"] == "completed" for r in run_ids), what=what)


# ------------------------------------------------------------------------- the batch payload's text

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(JSON, min_size=1, max_size=4))
def test_joining_canonical_items_is_the_canonical_batch_or_the_item_is_refused(payloads: list[Any]) -> None:
    """What batch_trigger does in SQL (join the items' canonical texts) is canonical_payload's answer for
    the batch, for every item check_batch_item lets through; the hash is then the same too."""
    items: list[str] = []
    for p in payloads:
        text = canonical_payload(p)[0]
        try:
            windows.check_batch_item(text)
        except PayloadError:  # refused only for what orjson cannot write (here: an integer beyond 64 bits)
            with pytest.raises(TypeError):
                orjson.dumps({"items": [p]})
            continue
        items.append(text.decode())
    if not items:
        return
    joined, digest = windows.first_batch(items[0])
    for item in items[1:]:
        joined = joined[:-2] + "," + item + "]}"
        digest = hashlib.sha256(joined.encode()).hexdigest()
    assert canonical_payload(loads(joined)) == (joined.encode(), digest)


# ------------------------------------------------------------------------------------------ debounce


def test_debounce_collapses_rapid_triggers_into_one_dispatch_with_the_last_payload(
    strait: Server, endpoint: Endpoint, dsn: str
) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, debounce_window_secs=3)
        payloads = [{"n": i, "note": "é☃"} for i in range(6)]
        receipts = [_trigger(c, job, p, debounce_key="k") for p in payloads]
        other = _trigger(c, job, {"other": True}, debounce_key="k2")
        assert {r["id"] for r in receipts} == {receipts[0]["id"]}, "one run per (job, key) while it waits"
        assert {r["status"] for r in receipts} == {"delayed"}
        assert other["id"] != receipts[0]["id"]
        run = c.get(f"/v1/runs/{receipts[0]['id']}").json()
        assert run["status"] == "delayed" and run["triggered_by"] == "debounce"
        assert run["payload"] == payloads[-1], "the newest trigger's payload replaces the run's"

        _wait_completed(c, {receipts[0]["id"], other["id"]}, "both debounced runs complete")
        got = _received(endpoint)
        assert got == {receipts[0]["id"]: payloads[-1], other["id"]: {"other": True}}
        for r in _runs(dsn, job):
            _canonical(r)

        # the window has passed: the next trigger starts a new quiet period, a new run
        again = _trigger(c, job, {"n": 99}, debounce_key="k")
        assert again["id"] not in got and again["status"] == "delayed"
        _wait_completed(c, {again["id"]}, "the second quiet period's run completes")
        assert _received(endpoint)[again["id"]] == {"n": 99}
        assert len(endpoint.requests) == 3


def test_debounce_without_a_key_uses_the_job_wide_key_and_moves_the_expiry_with_the_run(
    strait: Server, endpoint: Endpoint, dsn: str
) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, debounce_window_secs=600, run_ttl_secs=60)
        first = _trigger(c, job, {"a": 1})
        before = _runs(dsn, job)[0]
        second = _trigger(c, job, {"a": 2}, debounce_key="")  # an empty key is no key
        assert second["id"] == first["id"]
        (after,) = _runs(dsn, job)
        assert after["window_key"] == "debounce:"
        assert after["scheduled_at"] >= before["scheduled_at"]
        assert after["expires_at"] - after["scheduled_at"] == before["expires_at"] - before["scheduled_at"]
        assert (after["expires_at"] - after["scheduled_at"]).total_seconds() == 60


def test_a_constant_stream_of_triggers_cannot_push_a_debounced_run_past_ten_windows(
    strait: Server, endpoint: Endpoint, dsn: str
) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, debounce_window_secs=100)
        first = _trigger(c, job, {"n": 1}, debounce_key="k")
        # a stream of triggers began 995 s ago (10 windows = 1000 s): the next one may push the run 5 s out only
        stream = (
            "UPDATE job_runs SET created_at = now() - make_interval(secs => %s), scheduled_at = now() + interval '2 s'"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(stream, (995,))  # test set-up
        _trigger(c, job, {"n": 2}, debounce_key="k")
        (run,) = _runs(dsn, job)
        assert run["id"] == first["id"] and loads(run["payload"]) == {"n": 2}
        assert (run["scheduled_at"] - run["created_at"]).total_seconds() == pytest.approx(1000, abs=0.01)
        # past the cap, a trigger still gives the run its payload but no longer moves it
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(stream, (2000,))
        before = _runs(dsn, job)[0]["scheduled_at"]
        _trigger(c, job, {"n": 3}, debounce_key="k")
        assert _runs(dsn, job)[0]["scheduled_at"] == before
        wait_for(lambda: len(endpoint.requests) == 1, what="the capped run dispatched")
        assert _received(endpoint) == {first["id"]: {"n": 3}}


def test_concurrent_debounced_triggers_make_exactly_one_run_per_key(
    strait: Server, endpoint: Endpoint, dsn: str
) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, debounce_window_secs=3)
    bodies = [{"payload": {"i": i}, "debounce_key": f"k{i % 4}"} for i in range(200)]
    receipts = trigger_all(strait, job, bodies)
    by_key: dict[str, set[str]] = {}
    for body, receipt in zip(bodies, receipts, strict=True):
        by_key.setdefault(body["debounce_key"], set()).add(receipt["id"])
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    run_of = {key: next(iter(ids)) for key, ids in by_key.items()}
    assert len(set(run_of.values())) == 4
    with strait.client("p") as c:
        _wait_completed(c, set(run_of.values()), "one run per key completes")
    got = _received(endpoint)
    assert set(got) == set(run_of.values()) and len(endpoint.requests) == 4
    for key, run_id in run_of.items():
        assert got[run_id] in [b["payload"] for b in bodies if b["debounce_key"] == key], "a payload of its own key"
    assert len(_runs(dsn, job)) == 4


# --------------------------------------------------------------------------------------------- batch


def test_a_batch_collects_payloads_in_order_into_one_run(strait: Server, endpoint: Endpoint, dsn: str) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, batch_window_secs=2)
        payloads: list[Any] = [{"b": "é☃", "a": [1, 2.5, {"z": 1, "y": 2}]}, None, [3, "x"], "s", {"i": 4}]
        receipts = [_trigger(c, job, p, batch_key="k") for p in payloads]
        assert {r["id"] for r in receipts} == {receipts[0]["id"]} and {r["status"] for r in receipts} == {"delayed"}
        alone = _trigger(c, job, {"other": 1}, batch_key="k2")
        assert alone["id"] != receipts[0]["id"]
        _wait_completed(c, {receipts[0]["id"], alone["id"]}, "both batches complete")
        run = c.get(f"/v1/runs/{receipts[0]['id']}").json()
    items = [{} if p is None else p for p in payloads]  # an absent payload is {} (api.md §4.3.6)
    assert _received(endpoint) == {receipts[0]["id"]: {"items": items}, alone["id"]: {"items": [{"other": 1}]}}
    assert run["triggered_by"] == "manual" and run["payload"] == {"items": items}
    for r in _runs(dsn, job):
        _canonical(r)
        assert r["window_key"] in ("batch:k", "batch:k2")
    assert [r["window_items"] for r in _runs(dsn, job)] == [5, 1]


def test_batch_max_size_queues_a_full_batch_at_once(strait: Server, endpoint: Endpoint, dsn: str) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, batch_window_secs=600, batch_max_size=3)
        receipts = [_trigger(c, job, {"i": i}) for i in range(7)]
        ids = [r["id"] for r in receipts]
        assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5] != ids[6]
        assert [r["status"] for r in receipts] == ["delayed", "delayed", "queued"] * 2 + ["delayed"]
        _wait_completed(c, {ids[0], ids[3]}, "the two full batches complete long before their window ends")
        assert c.get(f"/v1/runs/{ids[6]}").json()["status"] == "delayed"
        events = c.get(f"/v1/runs/{ids[0]}/events").json()["data"]
        assert [e["message"] for e in events if e["type"] == "state_change"][:1] == ["delayed -> queued"]
    assert _received(endpoint) == {
        ids[0]: {"items": [{"i": 0}, {"i": 1}, {"i": 2}]},
        ids[3]: {"items": [{"i": 3}, {"i": 4}, {"i": 5}]},
    }
    for r in _runs(dsn, job):
        _canonical(r)


def test_concurrent_batched_triggers_lose_nothing(strait: Server, endpoint: Endpoint, dsn: str) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, batch_window_secs=2, batch_max_size=30)
    bodies = [{"payload": {"i": i}, "batch_key": f"k{i % 2}"} for i in range(200)]
    receipts = trigger_all(strait, job, bodies)
    run_ids = {r["id"] for r in receipts}
    with strait.client("p") as c:
        _wait_completed(c, run_ids, "every batch completes")
    got = _received(endpoint)
    assert set(got) == run_ids
    seen = Counter(item["i"] for body in got.values() for item in body["items"])
    assert seen == Counter(range(200)), "every trigger's payload in exactly one batch"
    for body, receipt in zip(bodies, receipts, strict=True):
        assert body["payload"] in got[receipt["id"]]["items"], "a receipt names the batch that holds its payload"
    for run_id, body in got.items():
        assert len(body["items"]) <= 30
        keys = {f"k{item['i'] % 2}" for item in body["items"]}
        assert len(keys) == 1, f"batch {run_id} mixes keys"
    assert len(got) >= 2 * (100 // 30 + 1)
    for r in _runs(dsn, job):
        _canonical(r)


def test_bulk_triggers_of_windowed_jobs_are_triggers_in_order(strait: Server, endpoint: Endpoint, dsn: str) -> None:
    with strait.client("p") as c:
        batch = _job(c, endpoint.url, "b", batch_window_secs=600)
        items = [{"payload": {"i": i}} for i in range(4)] + [{"payload": {"x": 1}, "batch_key": "other"}]
        r = c.post(f"/v1/jobs/{batch}/trigger/bulk", json={"items": items})
        assert r.status_code == 201, r.text
        body = r.json()
        ids = [x["id"] for x in body["results"]]
        assert len(set(ids[:4])) == 1 and ids[4] != ids[0]
        assert body["total"] == 5 and body["created"] == 2
        assert loads(_runs(dsn, batch)[0]["payload"]) == {"items": [{"i": i} for i in range(4)]}

        debounce = _job(c, endpoint.url, "d", debounce_window_secs=600)
        items = [{"payload": {"n": 1}, "debounce_key": "a"}, {"payload": {"n": 2}, "debounce_key": "b"}]
        items.append({"payload": {"n": 3}, "debounce_key": "a"})
        body = c.post(f"/v1/jobs/{debounce}/trigger/bulk", json={"items": items}).json()
        a, b, a2 = (x["id"] for x in body["results"])
        assert a == a2 != b and body["created"] == 2
        assert c.get(f"/v1/runs/{a}").json()["payload"] == {"n": 3}


def test_a_windowed_job_with_a_rate_limit_refuses_only_triggers_that_would_make_a_run(
    strait: Server, endpoint: Endpoint, dsn: str
) -> None:
    with strait.client("p") as c:
        job = _job(c, endpoint.url, batch_window_secs=600, batch_max_size=2, rate_limit_max=1)
        first = _trigger(c, job, {"i": 0})
        second = _trigger(c, job, {"i": 1})  # joins (and fills) the batch: no new run
        assert second["id"] == first["id"] and second["status"] == "queued"
        refused = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"i": 2}})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "enqueue_throttled"
    assert len(_runs(dsn, job)) == 1, "the refused trigger left nothing behind"


# ------------------------------------------------------------------------------- race with promotion


@pytest.fixture
def api_only(dsn: str, tmp_path: Path) -> Iterator[Server]:
    """An API process without workers: here only the test promotes delayed runs."""
    server = start_strait({"DATABASE_URL": dsn}, tmp_path, mode="api")
    yield server
    stop_strait(server)


@pytest.mark.parametrize("window", ["batch", "debounce"])
def test_a_trigger_racing_the_promotion_of_its_run_makes_a_new_run(api_only: Server, dsn: str, window: str) -> None:
    key = "batch_key" if window == "batch" else "debounce_key"
    with api_only.client("p") as c:
        job = _job(c, "http://127.0.0.1:9/none", **{f"{window}_window_secs": 600})
        first = _trigger(c, job, {"i": 1}, **{key: "k"})
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE job_runs SET scheduled_at = now() - interval '1 second'")  # due now
        claim = psycopg.connect(dsn)  # a transaction: the promotion holds the row until it commits
        try:
            result = Queue(claim, worker_id="w", lease_secs=30).claim(10)
            assert result.promoted and not result.runs  # promoted, not yet committed
            answer: list[dict[str, Any]] = []
            racer = threading.Thread(target=lambda: answer.append(_trigger(c, job, {"i": 2}, **{key: "k"})))
            racer.start()
            with psycopg.connect(dsn, autocommit=True) as watch:
                waiting = (
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%job_runs%'"
                )
                wait_for(lambda: watch.execute(waiting).fetchone() == (1,), what="the trigger waits on the promotion")
            claim.commit()
        finally:
            claim.close()
        racer.join(30)
    (second,) = answer
    assert second["id"] != first["id"] and second["status"] == "delayed"
    old, new = _runs(dsn, job)
    assert (old["id"], old["status"], new["id"], new["status"]) == (first["id"], "queued", second["id"], "delayed")
    if window == "batch":
        assert (loads(old["payload"]), loads(new["payload"])) == ({"items": [{"i": 1}]}, {"items": [{"i": 2}]})
    else:
        assert (loads(old["payload"]), loads(new["payload"])) == ({"i": 1}, {"i": 2})


# ---------------------------------------------------------------------------------------- bad input


def test_bad_window_input_is_a_4xx_and_writes_nothing(api_only: Server, dsn: str) -> None:
    with api_only.client("p") as c:
        c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"})
        base = {"project_id": "p", "name": "J", "endpoint_url": "http://127.0.0.1:9/x"}
        cases = [
            ({"debounce_window_secs": 5, "batch_window_secs": 5}, 400, "mutually exclusive"),
            ({"debounce_window_secs": 30 * 86_400 + 1}, 400, "debounce_window_secs must be <="),
            ({"batch_window_secs": 30 * 86_400 + 1}, 400, "batch_window_secs must be <="),
            ({"batch_window_secs": 5, "batch_max_size": 1001}, 400, "batch_max_size must be <= 1000"),
            ({"batch_window_secs": 5, "batch_max_size": 2**40}, 400, "batch_max_size must be <= 1000"),
            ({"batch_max_size": -1}, 422, "batch_max_size"),
            ({"debounce_window_secs": "5"}, 422, "debounce_window_secs"),
        ]
        for i, (extra, status, text) in enumerate(cases):
            r = c.post("/v1/jobs", json={**base, "slug": f"bad{i}", **extra})
            assert r.status_code == status, (extra, r.text)
            assert text in r.json()["error"]["message"] + str(r.json()["error"].get("details")), r.text
        batch = _job(c, "http://127.0.0.1:9/x", "batch", batch_window_secs=60)
        debounce = _job(c, "http://127.0.0.1:9/x", "debounce", debounce_window_secs=60)
        plain = _job(c, "http://127.0.0.1:9/x", "plain")
        assert c.patch(f"/v1/jobs/{batch}", json={"debounce_window_secs": 5}).status_code == 400
        assert c.patch(f"/v1/jobs/{batch}", json={"batch_max_size": 5000}).status_code == 400

        refused = [
            (batch, {"payload": {"big": 2**70}}, {}, "cannot join a batch"),
            (batch, {"payload": {}}, {"Idempotency-Key": "k"}, "idempotency key"),
            (debounce, {"payload": {}, "idempotency_key": "k"}, {}, "idempotency key"),
            (debounce, {"payload": {}, "scheduled_at": "2999-01-01T00:00:00Z"}, {}, "scheduled_at"),
        ]
        for job, body, headers, text in refused:
            r = c.post(f"/v1/jobs/{job}/trigger", json=body, headers=headers)
            assert r.status_code == 400 and text in r.json()["error"]["message"], r.text
        items = [{"payload": {"i": 0}}, {"payload": {"i": 1}, "idempotency_key": "k"}]
        r = c.post(f"/v1/jobs/{batch}/trigger/bulk", json={"items": items})
        assert r.status_code == 400 and "for item 1" in r.json()["error"]["message"], r.text
        long_key = c.post(f"/v1/jobs/{debounce}/trigger", json={"debounce_key": "x" * 257})
        assert long_key.status_code == 422
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM job_runs").fetchone() == (0,), "nothing half-written"

        # a debounce payload is only replaced, never joined: any payload goes; a key without a window is ignored
        assert _trigger(c, debounce, {"big": 2**70})["status"] == "delayed"
        plain_run = _trigger(c, plain, {"x": 1}, debounce_key="k", batch_key="k")
        assert plain_run["status"] == "queued"
        assert _runs(dsn, plain)[0]["window_key"] is None
