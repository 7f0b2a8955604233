"""Claims that find nothing cost a round trip and half a millisecond of PostgreSQL each (issue 16):
a trigger's NOTIFY wakes one poller of several, and freed slots claim again only for a poller that
was short of them. Counted from /metrics on a real `strait --mode all` with two worker processes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from strait_actors.actors.poller import SlotBook, next_gap, process_slot, wake_filter
from strait_actors.processes import SLOT_ENV
from tests.conftest import Endpoint, Server, free_port, start_strait, stop_strait, wait_for
from tests.test_metrics import scrape, value


def test_a_small_wake_is_for_one_poller_a_big_or_unsized_one_for_all() -> None:
    pollers = [wake_filter(i, 3, 100) for i in range(3)]
    for pid in range(1000, 1030):
        assert sum(w("7", pid) for w in pollers) == 1  # a trigger's few runs: exactly one poller
        assert all(w("100", pid) for w in pollers)  # a batch's worth: everyone helps
        assert all(w("", pid) for w in pollers)  # a retry, a freed gate, a resume: unsized
    assert {next(i for i, w in enumerate(pollers) if w("1", pid)) for pid in range(1000, 1030)} == {0, 1, 2}
    alone = wake_filter(0, 1, 100)
    assert all(alone("1", pid) for pid in range(10))


@pytest.mark.parametrize(
    ("env", "slot"), [(None, (0, 1)), ("1/2", (1, 2)), ("0/4", (0, 4)), ("2/2", (0, 1)), ("x/y", (0, 1))]
)
def test_the_slot_comes_from_the_supervisor(monkeypatch: pytest.MonkeyPatch, env: str | None, slot: Any) -> None:
    if env is None:
        monkeypatch.delenv(SLOT_ENV, raising=False)
    else:
        monkeypatch.setenv(SLOT_ENV, env)
    assert process_slot() == slot


def test_an_answer_about_free_slots_counts_the_runs_sent_after_the_question() -> None:
    book = SlotBook(1000)
    first = book.ask(now=0.0)
    assert book.inflight is None  # no claims before an answer
    second = book.ask(now=0.0)  # a (re)started dispatcher's report: the poller asks again
    assert not book.answered(1000, first) and book.inflight is None, "only the latest question counts"
    assert book.answered(1000, second) and book.inflight == 0
    book.dispatched(600)
    asked = book.ask(now=10.0)
    book.dispatched(400)  # claimed while the question was on its way: the answer cannot know them
    book.freed(100)  # written before the dispatcher read the question: the answer knows
    assert book.answered(1000 - 500, asked)
    assert book.inflight == 500 + 400, "the answer's 500 and the 400 sent after the question"
    book.freed(900)
    assert book.inflight == 0
    stale = book.ask(now=20.0)
    book.ask(now=20.0)
    book.dispatched(1000)
    assert not book.answered(1000, stale) and book.inflight == 1000, "an old answer frees nothing"
    # a question lost on its way (a restarted dispatcher not registered yet) is asked again
    assert not book.lost(now=20.5) and book.lost(now=21.0)
    assert book.answered(0, book.ask(now=21.0)) and not book.lost(now=99.0)
    assert book.inflight == 1000


def _job(c: httpx.Client, endpoint: Endpoint) -> str:
    c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Project p"}).raise_for_status()
    body = {"project_id": "p", "name": "e", "slug": "e", "endpoint_url": endpoint.url, "max_attempts": 1}
    return str(c.post("/v1/jobs", json=body).json()["id"])


def _completed(c: httpx.Client, run: str) -> bool:
    return bool(c.get(f"/v1/runs/{run}").json()["status"] == "completed")


def test_one_claim_per_trigger_with_two_worker_processes(dsn: str, tmp_path: Path, endpoint: Endpoint) -> None:
    # no clock ticks: every claim here is a NOTIFY's or freed slots' (and a lost wake would hang the test)
    server = start_strait({"DATABASE_URL": dsn, "POLLER_INTERVAL_MS": "600000"}, tmp_path, processes=2)
    try:
        with server.client("p") as c:
            job = _job(c, endpoint)
            warm = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {}}).json()["id"]
            wait_for(lambda: _completed(c, warm), timeout=30, what="the first run")
            before = value(scrape(server.base), "strait_queue_claim_batch_size_count")
            for i in range(40):
                run = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"i": i}}).json()["id"]
                wait_for(lambda run=run: _completed(c, run), timeout=10, what=f"run {i}")
            claims = value(scrape(server.base), "strait_queue_claim_batch_size_count") - before
        # each trigger: one claim by the poller its NOTIFY names; the other poller and the freed slot
        # of every outcome write claim nothing (before: about 3 claims per trigger)
        assert 40 <= claims <= 44, claims
    finally:
        assert stop_strait(server) == 0


def test_a_poller_short_of_slots_leaves_no_run_behind(dsn: str, tmp_path: Path, endpoint: Endpoint) -> None:
    """One slot per worker process, one of them held by a slow run: the runs whose NOTIFY names that
    process's poller go out through the other one's clock tick, not after the slow run."""

    async def behave(req: dict[str, Any]) -> dict[str, bool]:
        if b"slow" in req["body"]:
            await asyncio.sleep(8)
        return {"ok": True}

    endpoint.behave = behave
    env = {"DATABASE_URL": dsn, "WORKER_CONCURRENCY": "1", "POLLER_INTERVAL_MS": "200"}
    server: Server = start_strait(env, tmp_path, processes=2)
    try:
        with server.client("p") as c:
            job = _job(c, endpoint)
            slow = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"slow": True}}).json()["id"]
            wait_for(lambda: c.get(f"/v1/runs/{slow}").json()["status"] == "executing", what="the slow run")
            started = time.monotonic()
            for i in range(10):
                run = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"i": i}}).json()["id"]
                wait_for(lambda run=run: _completed(c, run), timeout=5, what=f"quick run {i}")
            assert time.monotonic() - started < 6
            assert c.get(f"/v1/runs/{slow}").json()["status"] == "executing"  # all went out beside it
            wait_for(lambda: _completed(c, slow), timeout=20, what="the slow run")
    finally:
        assert stop_strait(server) == 0


def test_the_wait_before_a_claim_follows_the_load() -> None:
    most = 0.04
    assert next_gap(1, 100, most) == pytest.approx(0.002)  # a trickle: shorter than the claim itself
    assert next_gap(0, 100, most) == 0.0
    assert next_gap(5, 100, most) == pytest.approx(0.01)
    assert next_gap(60, 100, most) == most  # a flow: at most CLAIM_COALESCE_MS
    assert next_gap(100, 100, most) == 0.0  # it took all it asked for: more are waiting, no wait
    assert next_gap(30, 30, most) == 0.0
    assert next_gap(60, 100, 0.0) == 0.0  # off


def _epoch(dsn: str, sql: str, *args: Any) -> float | None:
    """One timestamp (or interval) of the database as seconds."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT extract(epoch FROM ({sql}))::float8", args).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _run_at(dsn: str, run: str, column: str) -> float:
    """A timestamp of a run: `created_at` (its INSERT's transaction start), `started_at` (the start of
    the claim that took it) or `finished_at`."""
    at = _epoch(dsn, f"SELECT {column} FROM job_runs WHERE id = %s", run)
    assert at is not None
    return at


def _flow_claimed(dsn: str, job: str) -> float:
    """Wait until the flow's runs were claimed (all in one claim); when that claim began."""
    sql = "SELECT min(started_at) FROM job_runs WHERE job_id = %s"
    return float(wait_for(lambda: _epoch(dsn, sql, job), timeout=30, what="the flow's claim"))


@pytest.mark.parametrize("coalesce_ms", [1000, 0])
def test_a_claim_after_a_flow_waits_and_one_at_idle_goes_at_once(
    dsn: str, tmp_path: Path, endpoint: Endpoint, coalesce_ms: int
) -> None:
    """A claim that took a flow's worth of runs (500 here, in one bulk trigger, in one claim that
    asked for more) makes the claim for the next triggers' wake wait until CLAIM_COALESCE_MS after
    it began, so that it takes whatever arrived meanwhile; once the flow is over, a run goes out at
    once. CLAIM_COALESCE_MS=0: never a wait."""
    env = {
        "DATABASE_URL": dsn,
        "POLLER_INTERVAL_MS": "600000",  # no clock ticks: every claim here is a NOTIFY's
        "WORKER_CONCURRENCY": "2000",
        "MAX_DEQUEUE_BATCH_SIZE": "1000",  # the flow's 500 runs in one claim that wanted more
        "CLAIM_COALESCE_MS": str(coalesce_ms),
    }
    server = start_strait(env, tmp_path, processes=1)
    try:
        with server.client("p") as c:
            job = _job(c, endpoint)
            warm = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {}}).json()["id"]
            wait_for(lambda: _completed(c, warm), timeout=30, what="the first run")
            flow_job = c.post(
                "/v1/jobs", json={"project_id": "p", "name": "flow", "slug": "flow", "endpoint_url": endpoint.url}
            ).json()["id"]
            items = [{"payload": {"i": i}} for i in range(500)]
            c.post(f"/v1/jobs/{flow_job}/trigger/bulk", json={"items": items}).raise_for_status()
            flow = _flow_claimed(dsn, flow_job)
            after = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"after": True}}).json()["id"]
            wait_for(lambda: _completed(c, after), timeout=30, what="the run after the flow")
            # the flow is over: the claim that took `after` alone asks the next one for no wait
            idle = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"idle": True}}).json()["id"]
            wait_for(lambda: _completed(c, idle), timeout=30, what="the run at idle")
        made, claimed = _run_at(dsn, after, "created_at"), _run_at(dsn, after, "started_at")
        if coalesce_ms:
            assert made < flow + 0.5, made - flow  # it came while the gap ran
            assert claimed - flow >= 0.9, (claimed - flow, made - flow)  # and was claimed at its end
        else:
            assert claimed - made < 0.2, claimed - made
        assert _run_at(dsn, idle, "started_at") - _run_at(dsn, idle, "created_at") < 0.2
    finally:
        assert stop_strait(server) == 0


def test_a_freed_concurrency_slot_is_claimed_at_once_whatever_the_gap(
    dsn: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    """A job limited to one run at a time: the run held behind the limit is claimed as soon as the
    run before it ends (the freed gate's wake), although a flow's claim just before asked the claim
    for the next triggers to wait most of a second."""
    release = threading.Event()

    async def behave(req: dict[str, Any]) -> dict[str, bool]:
        while b"slow" in req["body"] and not release.is_set():  # until the test lets it end
            await asyncio.sleep(0.01)
        return {"ok": True}

    endpoint.behave = behave
    env = {
        "DATABASE_URL": dsn,
        "POLLER_INTERVAL_MS": "600000",
        "WORKER_CONCURRENCY": "2000",
        "MAX_DEQUEUE_BATCH_SIZE": "1000",
        "CLAIM_COALESCE_MS": "1000",
    }
    server = start_strait(env, tmp_path, processes=1)
    try:
        with server.client("p") as c:
            flow_job = _job(c, endpoint)
            body = {"project_id": "p", "name": "one", "slug": "one", "endpoint_url": endpoint.url, "max_concurrency": 1}
            one = c.post("/v1/jobs", json=body).json()["id"]
            first = c.post(f"/v1/jobs/{one}/trigger", json={"payload": {"slow": True}}).json()["id"]
            wait_for(lambda: c.get(f"/v1/runs/{first}").json()["status"] == "executing", what="the first run")
            held = c.post(f"/v1/jobs/{one}/trigger", json={"payload": {}}).json()["id"]
            # 500 runs in one claim that asked for more: the next triggers' claim waits a second
            items = [{"payload": {"i": i}} for i in range(500)]
            c.post(f"/v1/jobs/{flow_job}/trigger/bulk", json={"items": items}).raise_for_status()
            flow = _flow_claimed(dsn, flow_job)
            release.set()
            wait_for(lambda: _completed(c, held), timeout=30, what="the held run")
        first_end = _run_at(dsn, first, "finished_at")
        assert first_end < flow + 0.5, first_end - flow  # the slot was freed while the gap ran
        held_claimed = _run_at(dsn, held, "started_at")
        assert held_claimed - first_end < 0.3, (held_claimed - first_end, first_end - flow)
    finally:
        release.set()
        assert stop_strait(server) == 0


def test_a_worker_started_on_a_queue_keeps_to_its_calls_in_flight(dsn: str, tmp_path: Path, endpoint: Endpoint) -> None:
    """Runs queued before the worker starts: the poller claims on the dispatcher's first report of
    free slots, and an answer to its own question about them arrives after those claims. Counted
    as it was sent, not as it arrives, that answer must not hand out the slots a second time (it
    did: a worker with 1,000 calls in flight made 2,000 at once)."""
    calls, most = 0, 0

    async def behave(req: dict[str, Any]) -> dict[str, bool]:
        nonlocal calls, most
        calls += 1
        most = max(most, calls)
        try:
            await asyncio.sleep(0.3)
        finally:
            calls -= 1
        return {"ok": True}

    endpoint.behave = behave
    (tmp_path / "api").mkdir()
    (tmp_path / "worker").mkdir()
    api = start_strait({"DATABASE_URL": dsn}, tmp_path / "api", mode="api", processes=None)
    try:
        with api.client("p") as c:
            job = _job(c, endpoint)
            body = {"items": [{"payload": {"i": i}} for i in range(60)]}
            c.post(f"/v1/jobs/{job}/trigger/bulk", json=body).raise_for_status()
        for attempt in range(3):  # a new worker each time: the race is at its start
            port = free_port()  # a worker answers /health on its WORKER_PORT
            env = {"DATABASE_URL": dsn, "PORT": str(port), "WORKER_PORT": str(port), "WORKER_CONCURRENCY": "5"}
            worker = start_strait(env, tmp_path / "worker", mode="worker", processes=1)
            try:
                wait_for(lambda n=20 * (attempt + 1): len(endpoint.requests) >= n, timeout=30, what="calls")
            finally:
                assert stop_strait(worker) == 0
        assert most <= 5, f"{most} calls at once with WORKER_CONCURRENCY 5"
    finally:
        assert stop_strait(api) == 0
