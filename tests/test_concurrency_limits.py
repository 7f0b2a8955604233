"""Concurrency limits at claim time (engine.md §2.2, migration 0005), observed at a real endpoint.

Runs are triggered by hundreds of concurrent requests and dispatched by several worker processes;
the endpoint counts the requests it is serving at once, overall and per concurrency key. After
each test every gate is back to zero: no slot leaked, no held run lost.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from tests.client_helpers import make_job, setup, wait_terminal
from tests.conftest import Endpoint, Server, free_port, poll, start_strait, stop_strait, wait_for


class InFlight:
    """What the endpoint serves at once: overall and per concurrency key, with the peaks seen."""

    def __init__(self, endpoint: Endpoint, secs: float) -> None:
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.done = 0
        self.secs = secs
        endpoint.behave = self.serve

    async def serve(self, seen: dict[str, Any]) -> dict[str, Any]:
        key = orjson.loads(seen["body"]).get("k", "")
        self._move({"*", f"k:{key}"}, 1)
        try:
            await asyncio.sleep(self.secs)
        finally:
            self._move({"*", f"k:{key}"}, -1)
        return {"ok": True}

    def _move(self, names: set[str], step: int) -> None:
        with self.lock:
            for n in names:
                self.now[n] += step
                self.peak[n] = max(self.peak[n], self.now[n])
            if step < 0:
                self.done += 1

    def key_peaks(self) -> dict[str, int]:
        return {k: v for k, v in self.peak.items() if k.startswith("k:")}


def trigger_all(server: Server, api_key: str, job_id: str, bodies: list[dict[str, Any]]) -> list[str]:
    """Every body as its own trigger request, all in flight at once."""

    async def go() -> list[str]:
        limits = httpx.Limits(max_connections=len(bodies))
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(base_url=server.base, headers=headers, limits=limits, timeout=60) as http:
            answers = await asyncio.gather(*(http.post(f"/v1/jobs/{job_id}/trigger", json=b) for b in bodies))
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201][:3]
        return [a.json()["id"] for a in answers]

    return asyncio.run(go())


def gates_at_rest(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT ckey, active, held FROM run_gates WHERE active <> 0 OR held <> 0").fetchall()


def statuses(dsn: str, job_id: str) -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status FROM job_runs WHERE job_id = %s", (job_id,)).fetchall()
    return Counter(r[0] for r in rows)


@pytest.fixture
def two_servers(dsn: str, tmp_path: Path) -> Any:
    """`--mode all` with 2 worker processes and a second `--mode worker` with 2 more, one database."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    main = start_strait({"DATABASE_URL": dsn}, tmp_path / "a")
    port = free_port()  # a worker answers /health on its WORKER_PORT
    extra = start_strait(
        {"DATABASE_URL": dsn, "PORT": str(port), "WORKER_PORT": str(port)}, tmp_path / "b", mode="worker"
    )
    yield main
    stop_strait(extra)
    stop_strait(main)


@pytest.fixture
def clients2(two_servers: Server) -> Any:
    """`clients`, on `two_servers`."""
    admin, c, key = setup(two_servers)
    yield admin, c, key
    c.close()
    admin.close()


def _wait_all_completed(server: Server, dsn: str, job_id: str, n: int, timeout: float = 60) -> None:
    def done() -> bool:
        s = statuses(dsn, job_id)
        return s["completed"] == n or (sum(s.values()) - s["completed"] - s["queued"] - s["executing"] > 0)

    if not poll(done, timeout):
        with psycopg.connect(dsn) as conn:
            runs = conn.execute(
                "SELECT status, held, count(*) FROM job_runs WHERE job_id = %s GROUP BY 1, 2", (job_id,)
            ).fetchall()
            gates = conn.execute(
                "SELECT ckey, cap, active, held FROM run_gates WHERE job_id = %s", (job_id,)
            ).fetchall()
        errors = [line for line in server.logs().splitlines() if "ERROR" in line or "Traceback" in line]
        raise AssertionError(f"runs not all completed: runs {runs}, gates {gates}, log errors {errors[-10:]}")
    assert statuses(dsn, job_id) == Counter({"completed": n})


def test_max_concurrency_holds_across_worker_processes(
    dsn: str, two_servers: Server, clients2: Any, endpoint: Endpoint
) -> None:
    """500 concurrent triggers of a job limited to 5, four worker processes: never more than 5 at
    the endpoint, and the limit is used (5 reached), then every run completes."""
    _, c, key = clients2
    flight = InFlight(endpoint, 0.05)
    job = make_job(c, endpoint, "capped", max_concurrency=5)
    trigger_all(two_servers, key["key"], job["id"], [{"payload": {"i": i}} for i in range(500)])
    _wait_all_completed(two_servers, dsn, job["id"], 500)
    assert flight.peak["*"] == 5
    assert gates_at_rest(dsn) == []


def test_per_key_limits_hold_per_key_and_keys_run_side_by_side(
    dsn: str, two_servers: Server, clients2: Any, endpoint: Endpoint
) -> None:
    """max_concurrency_per_key=1 over 10 keys with a job limit of 4: one run per key at a time, at
    most 4 at once overall, and more than one key at a time (keys do not serialise each other).
    Runs without a key are limited by the job's limit only."""
    _, c, key = clients2
    flight = InFlight(endpoint, 0.05)
    job = make_job(c, endpoint, "per-key", max_concurrency=4, max_concurrency_per_key=1)
    bodies = [{"payload": {"k": f"key-{i % 10}"}, "concurrency_key": f"key-{i % 10}"} for i in range(500)]
    bodies += [{"payload": {"i": i}} for i in range(40)]  # no key: the job's limit alone
    trigger_all(two_servers, key["key"], job["id"], bodies)
    _wait_all_completed(two_servers, dsn, job["id"], 540)
    peaks = flight.key_peaks()
    assert {k: v for k, v in peaks.items() if k != "k:"} == {f"k:key-{i}": 1 for i in range(10)}
    assert 1 < flight.peak["*"] <= 4
    assert gates_at_rest(dsn) == []


def test_a_limit_changed_while_runs_wait_applies_to_them(
    dsn: str, strait: Server, clients: Any, endpoint: Endpoint
) -> None:
    """Runs held by a limit of 1 are released when the limit is removed (0; a PATCH's null leaves a
    field as it is): the rest run side by side."""
    _, c, key = clients
    flight = InFlight(endpoint, 0.3)
    job = make_job(c, endpoint, "loosened", max_concurrency=1)
    ids = trigger_all(strait, key["key"], job["id"], [{"payload": {"i": i}} for i in range(30)])
    wait_for(lambda: flight.done >= 2, 20, what="two runs done one at a time")
    assert flight.peak["*"] == 1
    with psycopg.connect(dsn) as conn:  # the waiting runs are held, out of the claim's index
        held = conn.execute("SELECT count(*) FROM job_runs WHERE job_id = %s AND held = 'g:'", (job["id"],)).fetchone()
    assert held is not None and held[0] > 10
    c.jobs.update(job["id"], {"max_concurrency": 0})  # 0: no limit (as DEFAULT_JOB_MAX_CONCURRENCY, engine.md §13)
    for run_id in ids:
        assert wait_terminal(c, run_id, 30)["status"] == "completed"
    assert flight.peak["*"] > 1
    assert gates_at_rest(dsn) == []


def test_runs_of_a_job_that_may_not_run_are_held_once_then_released(
    dsn: str, strait: Server, clients: Any, endpoint: Endpoint
) -> None:
    """Runs of a worker-mode job are held as 'job' by the first claim that meets them (so later
    claims never walk past them) while another job's runs go on; switching the job to HTTP releases
    them. Canceling a held run leaves its gate's count right."""
    _, c, key = clients
    InFlight(endpoint, 0.0)
    parked = make_job(c, endpoint, "parked", execution_mode="worker")
    other = make_job(c, endpoint, "other")
    parked_ids = trigger_all(strait, key["key"], parked["id"], [{"payload": {"i": i}} for i in range(50)])
    for run_id in trigger_all(strait, key["key"], other["id"], [{"payload": {}} for _ in range(20)]):
        assert wait_terminal(c, run_id)["status"] == "completed"

    def held() -> int:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM job_runs WHERE job_id = %s AND status = 'queued' AND held = 'job'",
                (parked["id"],),
            ).fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: held() == 50, 20, what="every worker-mode run held")
    c.runs.delete(parked_ids[0])
    c.jobs.update(parked["id"], {"execution_mode": "http"})
    for run_id in parked_ids[1:]:
        assert wait_terminal(c, run_id)["status"] == "completed"
    assert gates_at_rest(dsn) == []


def test_a_canceled_held_run_leaves_its_gate(dsn: str, strait: Server, clients: Any, endpoint: Endpoint) -> None:
    """A run held by a full gate and canceled there no longer counts as held; executing runs that
    are canceled give their slot back. Afterwards the gate is at zero."""
    _, c, key = clients
    release = threading.Event()

    async def slow(seen: dict[str, Any]) -> dict[str, Any]:
        while not release.is_set():
            await asyncio.sleep(0.05)
        return {"ok": True}

    endpoint.behave = slow
    job = make_job(c, endpoint, "held-cancel", max_concurrency=2, timeout_secs=30)
    ids = trigger_all(strait, key["key"], job["id"], [{"payload": {"i": i}} for i in range(6)])

    def gate() -> tuple[int, int] | None:
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT active, held FROM run_gates WHERE job_id = %s", (job["id"],)).fetchone()
        return (row[0], row[1]) if row else None

    wait_for(lambda: gate() == (2, 4), 20, what="2 executing, 4 held")
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id::text, status FROM job_runs WHERE job_id = %s", (job["id"],)).fetchall()
    executing = [r[0] for r in rows if r[1] == "executing"]
    queued = [r[0] for r in rows if r[1] == "queued"]
    for run_id in queued[:2] + executing[:1]:
        c.runs.delete(run_id)
    release.set()
    for run_id in ids:
        wait_terminal(c, run_id, 30)
    assert Counter(c.runs.get(r)["status"] for r in ids) == Counter({"completed": 3, "canceled": 3})
    assert gates_at_rest(dsn) == []


def test_pause_sets_a_jobs_runs_aside_and_resume_brings_them_back(
    dsn: str, strait: Server, clients: Any, endpoint: Endpoint
) -> None:
    """POST /pause: triggers are refused (409) and the job's queued runs are set aside by the next
    claim, not dispatched; pausing again keeps the first paused_at; POST /resume brings the runs
    back and they complete. A reason that is not a string is a 400, and nothing changes."""
    _, c, key = clients
    job = make_job(c, endpoint, "pausable")
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    ids = trigger_all(strait, key["key"], job["id"], [{"payload": {"i": i}, "scheduled_at": soon} for i in range(20)])
    headers = {"Authorization": f"Bearer {key['key']}"}
    with httpx.Client(base_url=strait.base, headers=headers, timeout=10) as h:
        bad = h.post(f"/v1/jobs/{job['id']}/pause", json={"reason": 5})
        assert bad.status_code == 400 and not h.get(f"/v1/jobs/{job['id']}").json()["paused"]
        first = h.post(f"/v1/jobs/{job['id']}/pause", json={"reason": "maintenance"}).json()
        assert (first["paused"], first["pause_reason"]) == (True, "maintenance")
        again = h.post(f"/v1/jobs/{job['id']}/pause").json()
        assert again["paused_at"] == first["paused_at"]
        refused = h.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {}})
        assert refused.status_code == 409 and "paused" in refused.json()["message"]

        def set_aside() -> bool:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'queued' AND held = 'job'), count(*) FROM job_runs "
                    "WHERE job_id = %s",
                    (job["id"],),
                ).fetchone()
            return row == (20, 20)

        wait_for(set_aside, 20, what="the paused job's runs set aside")
        assert not endpoint.requests
        resumed = h.post(f"/v1/jobs/{job['id']}/resume").json()
        assert (resumed["paused"], resumed.get("paused_at"), resumed.get("pause_reason")) == (False, None, None)
    for run_id in ids:
        assert wait_terminal(c, run_id)["status"] == "completed"
