"""Crash: both worker processes SIGKILLed while 200 runs are parked on events and 200 are executing
with SDK heartbeats. Waits are rows, so the parked runs lose nothing; the executing runs' own
heartbeats keep their leases while no worker does, so their endpoints finish them through the SDK.
Every run ends in exactly one terminal state; nothing is lost, nothing is dispatched twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from strait import AsyncClient

from strait_actors import fsm
from tests.client_helpers import Gate
from tests.conftest import Endpoint, start_strait, stop_strait, wait_for
from tests.test_processes import _setup_job, worker_pids
from tests.test_sdk_plane import sdk_endpoint

N = 200
# The lease, and the endpoint's heartbeat period (a third of the lease, as an SDK would beat). The 200
# endpoint coroutines run in this test process's one thread and share one httpx pool.
STALE = 10.0
BEAT = 3.0


def test_sigkill_of_every_worker_with_parked_and_heartbeating_runs(
    dsn: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    env = {"DATABASE_URL": dsn, "STALE_THRESHOLD_SECS": str(STALE), "HEARTBEAT_INTERVAL_SECS": "2"}
    server = start_strait(env, tmp_path)
    finish = Gate()
    beats: list[tuple[float, float, str]] = []  # (seconds a heartbeat took, when it was sent, run)

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        finish.bind()
        kind = seen["body"]
        if b'"park"' in kind:
            if seen["headers"].get("X-Resume-Event-Key"):
                return {"resumed": True}
            i = int(kind.split(b":")[-1].strip(b"}"))
            await rc.sdk_runs.wait_for_event_run(run_id, {"event_key": f"crash:{i}", "timeout_secs": 600})
            return {"parked": True}
        # runs beat at their own phase, as independent runs do: 200 calls in one burst through the test's
        # one httpx pool took up to 12 s each (measured), and leases ran out with their code alive
        await asyncio.sleep(random.uniform(0, BEAT))
        while not finish.is_open():  # a long call that keeps its run alive itself
            t0 = time.monotonic()
            await rc.sdk_runs.heartbeat_run(run_id)
            took = time.monotonic() - t0
            beats.append((took, t0, run_id))
            await asyncio.sleep(BEAT)
        await rc.sdk_runs.complete_run(run_id, {"result": {"long": True}})
        return {"http": "dropped"}

    try:
        errors = sdk_endpoint(server, endpoint, handler)
        job = _setup_job(server, endpoint, max_attempts=3, timeout_secs=120)
        with server.client("p") as c, psycopg.connect(dsn, autocommit=True) as conn:

            def count(status: str) -> int:
                row = conn.execute("SELECT count(*) FROM job_runs WHERE status = %s", (status,)).fetchone()
                return int(row[0]) if row else 0

            park = [{"payload": {"park": i}} for i in range(N)]
            c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": park}).raise_for_status()
            wait_for(lambda: count("waiting") == N, timeout=60, what="200 runs parked")
            long = [{"payload": {"long": i}} for i in range(N)]
            c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": long}).raise_for_status()
            wait_for(lambda: count("executing") == N and len(endpoint.requests) == 2 * N, what="200 executing")

            victims = worker_pids(server)
            assert len(victims) == 2
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            row = conn.execute("SELECT now()").fetchone()
            assert row is not None
            killed_at = row[0]

            def held() -> bool:
                """Every long run's lease reaches past anything its dead worker gave it: the SDK
                heartbeats alone extended them, and none was reaped meanwhile."""
                row = conn.execute(
                    "SELECT count(*) FROM job_runs WHERE status = 'executing' AND attempt = 1 "
                    "AND lease_expires_at > %s + make_interval(secs => %s)",
                    (killed_at, STALE + 2),
                ).fetchone()
                return row is not None and row[0] == N

            try:
                wait_for(held, timeout=30, what="the SDK heartbeats holding every lease")
            except AssertionError as exc:  # say where the runs are (this has failed rarely, unexplained)
                rows = conn.execute(
                    "SELECT status, attempt, lease_expires_at > %s + make_interval(secs => %s) AS held, count(*) "
                    "FROM job_runs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                    (killed_at, STALE + 2),
                ).fetchall()
                said = [ln for ln in server.logs().splitlines() if '"WARNING"' in ln or '"ERROR"' in ln]
                raise AssertionError(
                    f"{exc}; runs (status, attempt, held, n): {rows}; endpoint errors {errors[:3]}; "
                    f"server warnings {said[-20:]}"
                ) from None
            wait_for(
                lambda: set(worker_pids(server)).isdisjoint(victims) and len(worker_pids(server)) == 2,
                what="the workers restarted",
            )
            for i in range(N):
                r = c.post(f"/v1/events/crash:{i}/send", json={"payload": {"i": i}})
                assert r.status_code == 200, r.text
            finish.open()
            wait_for(lambda: count("completed") == 2 * N, timeout=60, what="every run completed")
            ends = conn.execute(
                "SELECT run_id, count(*) FROM run_events WHERE type = 'state_change' "
                "AND data->>'to' = ANY(%s) GROUP BY run_id",
                (sorted(fsm.TERMINAL),),
            ).fetchall()
            attempts = conn.execute("SELECT max(attempt) FROM job_runs").fetchone()
        slow = sorted(beats, reverse=True)[:5]
        assert not errors, (sorted({repr(e["exc"]) for e in errors}), "slowest heartbeats", slow)
        assert len(ends) == 2 * N and all(n == 1 for _, n in ends), "exactly one terminal change per run"
        assert attempts == (1,), "no run was retried"
        calls: dict[str, int] = {}
        for r in endpoint.requests:
            calls[r["headers"]["X-Run-ID"]] = calls.get(r["headers"]["X-Run-ID"], 0) + 1
        parked = {r["headers"]["X-Run-ID"] for r in endpoint.requests if b'"park"' in r["body"]}
        assert sorted(calls[p] for p in parked) == [2] * N  # dispatched, then resumed once
        assert sorted(n for run, n in calls.items() if run not in parked) == [1] * N  # never again
        with httpx.Client(base_url=server.base, timeout=10) as h:
            assert h.get("/health").status_code == 200
    finally:
        assert stop_strait(server) == 0
