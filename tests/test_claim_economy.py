"""Claims that find nothing cost a round trip and half a millisecond of PostgreSQL each (issue 16):
a trigger's NOTIFY wakes one poller of several, and freed slots claim again only for a poller that
was short of them. Counted from /metrics on a real `strait --mode all` with two worker processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from strait_actors.actors.poller import process_slot, wake_filter
from strait_actors.processes import SLOT_ENV
from tests.conftest import Endpoint, Server, start_strait, stop_strait, wait_for
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
