"""The supervisor restarts what dies, gives up past the restart intensity, and work survives crashes."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pykka

from strait_actors.actors.base import SupervisedActor, TreeContext
from strait_actors.actors.clock import Clock
from strait_actors.actors.supervisor import ChildSpec, RestartPolicy, Supervisor
from strait_actors.actors.tree import WorkerTree
from strait_actors.messages import LoopCrashed
from strait_actors.settings import Settings
from tests.conftest import Endpoint, wait_for
from tests.helpers import make_job, make_runs, statuses


class Boom:
    """Test message: the actor raises while handling it."""


class Fragile(SupervisedActor):
    name = "fragile"
    starts = 0
    fail_on_start = False

    def started(self) -> None:
        type(self).starts += 1
        if type(self).fail_on_start:
            raise RuntimeError("cannot start")

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Boom):
            raise RuntimeError("boom")


def _tree(settings: Settings, policy: RestartPolicy) -> tuple[pykka.ActorRef[Any], TreeContext, threading.Event]:
    ctx = TreeContext(settings=settings, dsn="unused", worker_id="w")
    failed = threading.Event()
    ref = Supervisor.start(ctx, Clock(ctx.registry), [ChildSpec("fragile", lambda c: Fragile.start(c))], policy, failed)
    return ref, ctx, failed


def test_a_crashed_child_is_restarted(settings: Settings) -> None:
    Fragile.starts, Fragile.fail_on_start = 0, False
    ref, ctx, failed = _tree(settings, RestartPolicy(base_delay=0.01, max_restarts=5))
    try:
        first = wait_for(lambda: ctx.registry.get("fragile"), what="first start")
        assert Fragile.starts == 1
        assert ctx.registry.tell("fragile", Boom())
        wait_for(lambda: Fragile.starts == 2 and ctx.registry.get("fragile") not in (None, first), what="restart")
        assert not failed.is_set()
    finally:
        ref.stop(block=True, timeout=10)


def test_restart_intensity_cap_escalates(settings: Settings) -> None:
    Fragile.starts, Fragile.fail_on_start = 0, True
    ref, _ctx, failed = _tree(settings, RestartPolicy(base_delay=0.01, max_delay=0.05, max_restarts=3, window=60))
    try:
        wait_for(failed.is_set, timeout=10, what="escalation")
        assert Fragile.starts == 4  # the first start and three restarts
    finally:
        Fragile.fail_on_start = False
        ref.stop(block=True, timeout=10)


def _ten_calls_in_flight(dsn: str, settings: Settings, endpoint: Endpoint, release: threading.Event) -> WorkerTree:
    """A started tree with 10 runs (max_attempts 3) whose endpoint calls hang until `release`."""

    async def slow(_: dict[str, Any]) -> dict[str, bool]:
        import asyncio

        while not release.is_set():
            await asyncio.sleep(0.02)
        return {"ok": True}

    endpoint.behave = slow
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, endpoint.url, max_attempts=3)
        make_runs(conn, job, 10)
    tree = WorkerTree(settings, dsn, policy=RestartPolicy(base_delay=0.05))
    tree.start()
    try:
        wait_for(lambda: len(endpoint.requests) >= 10, what="10 calls in flight")
    except BaseException:
        release.set()
        tree.stop()
        raise
    return tree


def test_dispatcher_crash_mid_dispatch_loses_no_run(dsn: str, settings: Settings, endpoint: Endpoint) -> None:
    """Runs in flight when the dispatcher dies are reaped after their lease and dispatched again."""
    release = threading.Event()
    tree = _ten_calls_in_flight(dsn, settings, endpoint, release)
    try:
        crashed = tree.ctx.registry.get("dispatcher")
        tree.ctx.registry.tell("dispatcher", LoopCrashed("injected by the test"))
        wait_for(lambda: tree.ctx.registry.get("dispatcher") is not crashed, what="dispatcher replaced")
        release.set()
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_for(lambda: statuses(conn) == {"completed": 10}, timeout=30, what="all completed")
            attempts = {r[0] for r in conn.execute("SELECT attempt FROM job_runs")}
        assert attempts == {2}, "each run was retried once after its lease was lost"
        assert not tree.failed.is_set()
    finally:
        release.set()
        tree.stop()


def test_stop_drains_then_releases_what_is_still_in_flight(dsn: str, settings: Settings, endpoint: Endpoint) -> None:
    """Calls that finish within the grace period are recorded; the rest go back to the queue."""
    import asyncio

    async def answer(seen: dict[str, Any]) -> dict[str, bool]:
        if b"slow" in seen["body"]:
            await asyncio.sleep(30)
        return {"ok": True}

    endpoint.behave = answer
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, endpoint.url)
        make_runs(conn, job, 3, payload='{"slow":1}')
    tree = WorkerTree(settings.replace(worker_drain_timeout_secs=1.0), dsn)
    tree.start()
    wait_for(lambda: len(endpoint.requests) == 3, what="3 slow calls in flight")
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_runs(conn, job, 1, payload='{"fast":1}')
        wait_for(lambda: statuses(conn).get("completed") == 1, what="the fast run completes")
        started = time.monotonic()
        tree.stop()
        assert time.monotonic() - started < 8
        rows = conn.execute("SELECT status, attempt, lease_id FROM job_runs WHERE payload::text LIKE '%%slow%%'")
        assert [tuple(r) for r in rows] == [("queued", 1, None)] * 3


def test_a_lost_database_connection_is_reconnected_and_no_outcome_is_lost(
    dsn: str, settings: Settings, endpoint: Endpoint
) -> None:
    """The outcome writer reconnects (the store's `Unavailable`), so the calls' results are kept."""
    release = threading.Event()
    tree = _ten_calls_in_flight(dsn, settings, endpoint, release)
    try:
        dispatcher = tree.ctx.registry.get("dispatcher")
        with psycopg.connect(dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            assert killed is not None and killed[0] >= 2, "the worker's connections were cut"
            release.set()
            wait_for(lambda: statuses(conn) == {"completed": 10}, timeout=30, what="all completed")
            attempts = {r[0] for r in conn.execute("SELECT attempt FROM job_runs")}
        assert attempts == {1}, "the results of the first attempt were written after the reconnect"
        assert tree.ctx.registry.get("dispatcher") is dispatcher, "the dispatcher did not crash"
        assert not tree.failed.is_set()
    finally:
        release.set()
        tree.stop()
