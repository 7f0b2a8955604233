"""Whole processes: SIGKILL of a worker loses no run; SIGTERM stops cleanly with exit 0."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from strait_actors.settings import load
from tests.conftest import Endpoint, Server, start_strait, stop_strait, wait_for


def child_pids(server: Server, flag: str) -> list[int]:
    """Children of the strait process whose command line has `flag` (--worker-child, --api-child)."""
    pids = []
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(c) for c in children)
    found = []
    for p in pids:
        try:
            if flag.encode() in Path(f"/proc/{p}/cmdline").read_bytes():
                found.append(p)
        except FileNotFoundError:  # reaped meanwhile
            continue
    return found


def worker_pids(server: Server) -> list[int]:
    """The worker processes: children of the strait process running --worker-child."""
    return child_pids(server, "--worker-child")


def test_all_mode_runs_one_worker_process_per_two_cpus_with_their_calls(dsn: str, tmp_path: Path) -> None:
    """Without --processes, `strait --mode all` starts max(1, CPUs // 2) worker processes, and each
    is given the calls in flight of the CPUs it has to itself (WORKER_CONCURRENCY 0 resolved)."""
    cpus = os.cpu_count() or 1
    count = max(1, cpus // 2)
    calls = 500 * max(1, cpus // count)
    server = start_strait({"DATABASE_URL": dsn}, tmp_path, processes=None)
    try:
        wait_for(lambda: len(worker_pids(server)) == count, what=f"{count} worker process(es)")
        for pid in worker_pids(server):
            environ = dict(
                item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
            )
            assert (environ["PROCESSES"], environ["WORKER_CONCURRENCY"]) == (str(count), str(calls))
        assert f"workers:     {count} process(es) x {calls} calls in flight" in server.logs()
    finally:
        assert stop_strait(server) == 0


def _setup_job(server: Server, endpoint: Endpoint, **job: Any) -> str:
    with server.client() as c:
        c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}).raise_for_status()
        r = c.post("/v1/jobs", json={"project_id": "p", "name": "J", "slug": "j", "endpoint_url": endpoint.url, **job})
        r.raise_for_status()
        return str(r.json()["id"])


def _kill_a_worker_mid_dispatch(dsn: str, tmp_path: Path, endpoint: Endpoint, env: dict[str, str]) -> float:
    """40 runs in flight, the busiest worker killed -9: returns the seconds from the kill until
    every run completed, having checked that exactly its runs were dispatched again."""
    import asyncio

    async def slow(_: dict[str, Any]) -> dict[str, bool]:
        await asyncio.sleep(1.0)
        return {"ok": True}

    endpoint.behave = slow
    server = start_strait({"DATABASE_URL": dsn, **env}, tmp_path)
    try:
        job = _setup_job(server, endpoint, max_attempts=3, timeout_secs=10)
        with server.client("p") as c:
            items = [{"payload": {"i": i}} for i in range(40)]
            c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": items}).raise_for_status()
        wait_for(lambda: len(endpoint.requests) >= 40, what="all 40 calls in flight")
        assert len(worker_pids(server)) == 2
        with psycopg.connect(dsn) as conn:
            holders = dict(
                conn.execute(
                    "SELECT split_part(worker_id, ':', 2)::int, count(*) FROM job_runs "
                    "WHERE status = 'executing' GROUP BY 1"
                ).fetchall()
            )
        victim, owned = max(holders.items(), key=lambda kv: kv[1])
        assert victim in worker_pids(server) and owned > 0
        victims = [victim]
        os.kill(victims[0], signal.SIGKILL)
        killed_at = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:

            def done() -> bool:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM job_runs"
                ).fetchone()
                return row is not None and row[0] == row[1] == 40

            wait_for(done, timeout=40, what="every run completed")
            took = time.monotonic() - killed_at
            retried = conn.execute("SELECT count(*) FROM job_runs WHERE attempt = 2").fetchone()
        assert retried == (owned,), "exactly the killed worker's runs were dispatched again"
        wait_for(
            lambda: len(worker_pids(server)) == 2 and victims[0] not in worker_pids(server),
            what="the worker process restarted",
        )
        return took
    finally:
        assert stop_strait(server) == 0


def test_sigkill_of_a_worker_mid_dispatch_loses_no_run(dsn: str, tmp_path: Path, endpoint: Endpoint) -> None:
    _kill_a_worker_mid_dispatch(dsn, tmp_path, endpoint, {})  # the suite's short lease


def test_with_the_default_lease_a_killed_workers_runs_are_done_within_30_s(
    dsn: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    defaults = load(environ={})
    env = {
        "HEARTBEAT_INTERVAL_SECS": str(defaults.heartbeat_interval_secs),
        "STALE_THRESHOLD_SECS": str(defaults.stale_threshold_secs),
        "REAPER_INTERVAL_SECS": str(defaults.reaper_interval_secs),
        "POLLER_INTERVAL_MS": str(defaults.poller_interval_ms),
    }
    took = _kill_a_worker_mid_dispatch(dsn, tmp_path, endpoint, env)
    assert took <= 30, f"the killed worker's runs took {took:.1f} s to complete"


def test_sigterm_exits_zero_and_leaves_nothing_executing(dsn: str, tmp_path: Path, endpoint: Endpoint) -> None:
    server = start_strait({"DATABASE_URL": dsn}, tmp_path)
    job = _setup_job(server, endpoint)
    with server.client("p") as c:
        r = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"x": 1}})
        run_id = r.json()["id"]
        wait_for(lambda: c.get(f"/v1/runs/{run_id}").json()["status"] == "completed", what="completed")
    started = time.monotonic()
    assert stop_strait(server) == 0
    assert time.monotonic() - started < 20
    assert "Traceback" not in server.logs()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM job_runs WHERE status = 'executing'").fetchone() == (0,)


def _gone(pid: int) -> bool:
    """Exited (a zombie until its parent reaps it counts: it runs nothing more)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_burst_of_stop_signals_still_stops_a_worker(dsn: str, tmp_path: Path) -> None:
    """Ctrl-C pressed again and again reaches every process of the group, and the supervisor adds
    its own SIGTERM: a worker's handler runs nested inside itself. One that took a lock (an Event's
    `set`) hung its process for good, and the program's stop waited out the grace, then killed it."""
    server = start_strait({"DATABASE_URL": dsn}, tmp_path)
    try:
        wait_for(lambda: len(worker_pids(server)) == 2, what="two worker processes")
        victims = worker_pids(server)
        time.sleep(1.0)  # their trees started: the handlers are in place
        burst_until, i = time.monotonic() + 3.0, 0
        while time.monotonic() < burst_until and not (i % 1000 == 0 and all(_gone(v) for v in victims)):
            for victim in victims:  # a zombie takes signals too; a reaped one is gone
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGTERM if i % 2 else signal.SIGINT)
            i += 1
        wait_for(lambda: all(_gone(v) for v in victims), timeout=10, what="the signalled worker processes exited")
    finally:
        started = time.monotonic()
        assert stop_strait(server) == 0
    assert time.monotonic() - started < 15, "stopped within the grace, nothing left to kill"
