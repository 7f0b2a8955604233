"""Several API processes on one port (`--api-processes N`, SO_REUSEPORT): each serves, a dead one is
restarted, SIGTERM drains them all, rate limits hold across them, and any of them scrapes them all.

Which process answered is read from the X-Request-Id every answer carries: its prefix is drawn
once per process (api/http.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from strait import AsyncClient

from tests.client_helpers import Gate, make_job, setup
from tests.conftest import SECRET, Endpoint, Server, start_strait, stop_strait, wait_for
from tests.test_metrics import samples_of, scrape, value
from tests.test_processes import child_pids
from tests.test_run_stream import _process_listeners, streams_to_the_end
from tests.test_sdk_plane import sdk_endpoint

ADMIN = {"Authorization": f"Bearer {SECRET}"}


def fresh(server: Server, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request on a connection of its own: the kernel picks the process per connection."""
    return httpx.get(f"{server.base}{path}", headers=headers, timeout=30)


def process_of(r: httpx.Response) -> str:
    return r.headers["X-Request-Id"].rsplit("-", 1)[0]


def serving(server: Server, n: int = 32) -> set[str]:
    """The processes that answered n fresh connections (two are all but sure to answer 32)."""
    return {process_of(fresh(server, "/health")) for _ in range(n)}


def gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_api_processes_share_the_port_and_a_dead_one_is_restarted(dsn: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "strait_actors.cli", "--api-processes", "2"]
    server = start_strait({"DATABASE_URL": dsn}, tmp_path, processes=1, argv=argv)
    try:
        assert "(2 processes)" in server.logs()
        assert len(child_pids(server, "--worker-child")) == 1
        (child,) = wait_for(lambda: child_pids(server, "--api-child"), what="the second API process")
        wait_for(lambda: len(serving(server)) == 2, what="both API processes answering")

        os.kill(child, signal.SIGKILL)
        wait_for(lambda: gone(child), what="the killed API process gone")
        answers = [fresh(server, "/health") for _ in range(32)]
        assert all(r.status_code == 200 for r in answers), "the port keeps answering"
        assert len({process_of(r) for r in answers}) == 1

        (restarted,) = wait_for(lambda: child_pids(server, "--api-child"), what="the API process restarted")
        assert restarted != child
        wait_for(lambda: len(serving(server)) == 2, what="the restarted process answering")
        assert "API process 0 (pid" in server.logs()
    finally:
        assert stop_strait(server) == 0
    wait_for(lambda: gone(restarted), what="the API child stopped with the program")
    assert "Traceback" not in server.logs()


def test_sigterm_lets_every_api_process_finish_its_requests_in_flight(dsn: str, tmp_path: Path) -> None:
    """Requests held by a lock in both processes when SIGTERM comes: the listeners close, then
    each request is answered once the lock goes, and the program exits 0."""
    env = {"DATABASE_URL": dsn, "API_PROCESSES": "2", "DB_POOL_SIZE": "16"}
    server = start_strait(env, tmp_path, mode="api")
    try:
        wait_for(lambda: len(serving(server)) == 2, what="both API processes answering")
        with server.client() as c:
            c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}).raise_for_status()
            job = c.post(
                "/v1/jobs", json={"project_id": "p", "name": "J", "slug": "j", "endpoint_url": "http://127.0.0.1:9/"}
            ).json()["id"]
        answers: list[httpx.Response] = []

        def ask() -> None:
            answers.append(fresh(server, f"/v1/jobs/{job}", ADMIN))

        with psycopg.connect(dsn) as lock, psycopg.connect(dsn, autocommit=True) as watch:
            lock.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            threads = [threading.Thread(target=ask) for _ in range(16)]
            for t in threads:
                t.start()

            def waiting() -> bool:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE '%FROM jobs WHERE id%'"
                ).fetchone()
                return row is not None and row[0] == 16

            wait_for(waiting, what="16 requests in flight, held by the lock")
            server.proc.send_signal(signal.SIGTERM)

            def closed() -> bool:
                try:
                    fresh(server, "/health")
                except httpx.ConnectError:
                    return True
                return False

            wait_for(closed, what="every listener closed")
            assert server.proc.poll() is None, "the parent waits for its requests in flight"
            lock.rollback()
        for t in threads:
            t.join(30)
        assert [r.status_code for r in answers] == [200] * 16
        assert len({process_of(r) for r in answers}) == 2, "both processes had requests in flight"
        assert server.proc.wait(30) == 0
    finally:
        stop_strait(server)
    assert "Traceback" not in server.logs()


def _count_answers(server: Server, limit: int) -> tuple[int, set[str], set[str]]:
    """Requests from one caller over fresh connections until the limit is well past, all in one
    window (a minute that turns over meanwhile starts again with another caller): how many were
    allowed, which processes answered and the X-RateLimit-Limit of the refusals."""
    for attempt in range(3):
        window = int(time.time()) // 60
        headers = {**ADMIN, "X-Actor-Id": f"caller-{attempt}", "X-Project-Id": "p"}
        answers = [fresh(server, "/v1/jobs", headers) for _ in range(4 * limit)]
        if int(time.time()) // 60 == window:
            allowed = sum(r.status_code == 200 for r in answers)
            assert all(r.status_code in (200, 429) for r in answers)
            refusals = {r.headers["X-RateLimit-Limit"] for r in answers if r.status_code == 429}
            return allowed, {process_of(r) for r in answers}, refusals
    raise AssertionError("three minutes turned over")


def test_without_redis_each_api_process_enforces_its_share_of_a_limit(dsn: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": dsn, "API_PROCESSES": "2", "RATE_LIMIT_REQUESTS": "11"}
    server = start_strait(env, tmp_path, mode="api")
    try:
        wait_for(lambda: len(serving(server)) == 2, what="both API processes answering")
        allowed, processes, limits = _count_answers(server, 11)
        assert len(processes) == 2
        assert limits == {"6"}, "each process allows ceil(11 / 2)"
        assert allowed == 12
    finally:
        stop_strait(server)


def test_with_redis_api_processes_share_one_count(dsn: str, redis_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": dsn, "REDIS_URL": redis_url, "API_PROCESSES": "2", "RATE_LIMIT_REQUESTS": "10"}
    server = start_strait(env, tmp_path, mode="api")
    try:
        wait_for(lambda: len(serving(server)) == 2, what="both API processes answering")
        allowed, processes, limits = _count_answers(server, 10)
        assert len(processes) == 2
        assert limits == {"10"} and allowed == 10
    finally:
        stop_strait(server)


def test_metrics_from_either_api_process_cover_both(dsn: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": dsn, "API_PROCESSES": "2", "DB_POOL_SIZE": "3"}
    server = start_strait(env, tmp_path, mode="api")
    try:
        wait_for(lambda: len(serving(server)) == 2, what="both API processes answering")
        answers = [fresh(server, "/health/ready") for _ in range(40)]
        assert len({process_of(r) for r in answers}) == 2, "each process took a share of the 40"
        ready = {"route": "/health/ready", "status": "200"}
        count = "strait_http_request_duration_seconds_count"
        wait_for(lambda: value(scrape(server.base), count, **ready) == 40, what="all 40 requests in one scrape")
        scrapers: set[str] = set()
        while len(scrapers) < 2:  # a scrape answered by each process sees both processes' series
            r = fresh(server, "/metrics", {"X-Internal-Secret": SECRET})
            scrapers.add(process_of(r))
            samples = samples_of(r)
            assert value(samples, count, **ready) == 40
            assert value(samples, "strait_db_pool_conns", state="max") == 6, "both pools (3 each)"
    finally:
        stop_strait(server)


def test_run_streams_through_every_api_process_without_redis(endpoint: Endpoint, dsn: str, tmp_path: Path) -> None:
    """Each API process listens for run events itself: streams opened on fresh connections (the
    kernel spreads them over both) all see the run through to its end."""
    env = {"DATABASE_URL": dsn, "API_PROCESSES": "2", "SSE_KEEPALIVE_INTERVAL_SECS": "0.3"}
    server = start_strait(env, tmp_path, processes=1)
    admin, c, _ = setup(server)
    gate = Gate()

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        await gate.wait()
        await rc.sdk_runs.log_run(run_id, {"level": "info", "message": "hello"})
        await rc.sdk_runs.complete_run(run_id, {"result": {"ok": 1}})
        return {"http": True}

    try:
        wait_for(lambda: len(_process_listeners(dsn)) == 2, what="a listener in each API process")
        sdk_endpoint(server, endpoint, handler)
        run_id = c.jobs.trigger(make_job(c, endpoint)["id"], {"payload": {}})["id"]
        wait_for(lambda: gate.bound, what="the run executing")
        streams = streams_to_the_end([server] * 8, run_id, gate)
        for s in streams:
            kinds = [(m["type"], m.get("message") or m.get("to")) for i, m in s if i is not None]
            assert kinds == [("event", "hello"), ("status_change", "completed")], s
    finally:
        admin.close()
        c.close()
        stop_strait(server)


def test_children_stop_when_the_program_is_killed(dsn: str, tmp_path: Path) -> None:
    """SIGKILL of the program (no drain, no SIGTERM to its children): its API and worker processes
    notice their parent is gone and stop, so none keeps the port or claims runs."""
    argv = [sys.executable, "-m", "strait_actors.cli", "--api-processes", "2"]
    server = start_strait({"DATABASE_URL": dsn}, tmp_path, processes=1, argv=argv)
    (api,) = wait_for(lambda: child_pids(server, "--api-child"), what="the second API process")
    (worker,) = child_pids(server, "--worker-child")
    server.proc.kill()
    server.proc.wait()
    wait_for(lambda: gone(api) and gone(worker), timeout=30, what="the orphaned children stopping")
    assert "parent process" in server.logs()


def gauges_of(folder: Path, pid: int) -> set[str]:
    """The gauges process `pid` has set (its multiprocess files: `gauge_<mode>_<pid>.db`)."""
    from prometheus_client.mmap_dict import MmapedDict

    names = set()
    for path in folder.glob(f"gauge_*_{pid}.db"):
        book = MmapedDict(str(path), read_mode=True)
        try:
            names |= {json.loads(key)[0] for key, _, _ in book.read_all_values()}
        finally:
            book.close()
    return names


def test_one_api_process_counts_the_queue_depth(dsn: str, tmp_path: Path) -> None:
    """The depth count reads every run it counts (metrics_sampler): the program's first API process
    counts, and the others sample the rest (their pool, the transitions) but not the depth. Any
    process's scrape serves the count (the gauge is `mostrecent` across the program's processes)."""
    server = start_strait({"DATABASE_URL": dsn, "API_PROCESSES": "3"}, tmp_path, processes=1)
    try:
        children = wait_for(lambda: len(c := child_pids(server, "--api-child")) == 2 and c, what="2 more API processes")
        folder = tmp_path / "data" / "metrics" / str(server.proc.pid)  # runtime.metrics_dir
        wait_for(
            lambda: all("strait_db_pool_conns" in gauges_of(folder, pid) for pid in children),
            what="every API child's sampler at work",
        )
        time.sleep(1.5)  # a pass more (DRAIN_SECS): each child's first pass has long ended
        wait_for(lambda: "strait_queue_depth" in gauges_of(folder, server.proc.pid), what="the parent's count")
        for pid in children:
            assert "strait_queue_depth" not in gauges_of(folder, pid)
        wait_for(lambda: len(serving(server)) == 3, what="all three processes answering")
        for _ in range(8):  # whichever process answers
            assert ("strait_queue_depth", (("status", "queued"),)) in scrape(server.base)
    finally:
        assert stop_strait(server) == 0
