"""Routing around a failing endpoint: the fallback endpoint (engine.md §3.5) and the per-endpoint
circuit breaker (engine.md §3.4), against real local endpoints that fail on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from tests.client_helpers import make_job, setup, wait_terminal
from tests.conftest import Endpoint, Server, free_port, start_strait, stop_strait, wait_for


@pytest.fixture
def one_worker(dsn: str, tmp_path: Path) -> Any:
    """`--mode all` with one worker process (its breakers are the only ones) and a 5 s cool-down."""
    server = start_strait(
        {"DATABASE_URL": dsn, "CIRCUIT_BREAKER_THRESHOLD": "3", "CIRCUIT_BREAKER_COOLDOWN_SECS": "5"},
        tmp_path,
        processes=1,
    )
    admin, c, _ = setup(server)
    yield server, c
    c.close()
    admin.close()
    stop_strait(server)


def _by_path(endpoint: Endpoint, answers: dict[str, int]) -> Counter[str]:
    """The endpoint answers by path query `?as=<name>` with the status in `answers`; calls counted."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def behave(seen: dict[str, Any]) -> Any:
        name = seen["query"].removeprefix("as=")
        with lock:
            calls[name] += 1
        status = answers[name]
        return web.json_response({"as": name}, status=status)

    endpoint.behave = behave
    return calls


def test_a_transient_failure_goes_to_the_fallback_and_a_final_answer_does_not(
    one_worker: tuple[Server, Any], endpoint: Endpoint
) -> None:
    """Refused connection and 429 at the primary: the fallback's 2xx completes the run with its
    result. A 400 or a 500 at the primary is the run's answer (engine.md §3.5: only transient-like
    classes fall back); a fallback that fails too leaves both errors on the run."""
    _, c = one_worker
    answers = {"ok": 200, "limited": 429, "bad": 400, "down": 500, "fb-down": 503}
    calls = _by_path(endpoint, answers)
    closed = f"http://127.0.0.1:{free_port()}/nothing-listens"
    cases = {
        "refused": (closed, "ok", "completed"),
        "limited": (endpoint.url + "?as=limited", "ok", "completed"),
        "bad": (endpoint.url + "?as=bad", "ok", "dead_letter"),
        "down": (endpoint.url + "?as=down", "ok", "dead_letter"),
        "both": (endpoint.url + "?as=limited", "fb-down", "dead_letter"),
    }
    runs = {}
    for slug, (primary, fallback, _) in cases.items():
        job = make_job(
            c,
            endpoint,
            slug,
            endpoint_url=primary,
            fallback_endpoint_url=endpoint.url + f"?as={fallback}",
            max_attempts=1,
        )
        runs[slug] = c.jobs.trigger(job["id"], {"payload": {"case": slug}})["id"]
    ended = {slug: wait_terminal(c, run_id) for slug, run_id in runs.items()}
    assert {slug: r["status"] for slug, r in ended.items()} == {s: v[2] for s, v in cases.items()}
    assert ended["refused"]["result"] == {"as": "ok"} and ended["limited"]["result"] == {"as": "ok"}
    assert ended["both"]["error"] == "endpoint returned 429; fallback: endpoint returned 503"
    assert ended["bad"]["error"] == "endpoint returned 400" and ended["down"]["error"] == "endpoint returned 500"
    # the fallback was called for refused, limited and both only
    assert calls["ok"] == 2 and calls["fb-down"] == 1 and calls["bad"] == 1 and calls["down"] == 1


def test_the_circuit_opens_holds_runs_without_spending_attempts_then_closes(
    dsn: str, one_worker: tuple[Server, Any], endpoint: Endpoint
) -> None:
    """Threshold 3, cool-down 5 s: three calls answered 503 open the endpoint's circuit. Runs
    triggered then get no call while it is open: they wait in the queue (`circuit_open`) with their
    attempt unspent. Once the endpoint answers 200 again, the first call after the cool-down closes
    the circuit and every run completes; the held runs on their first attempt."""
    server, c = one_worker
    answers = {"flaky": 503}
    calls = _by_path(endpoint, answers)
    job = make_job(
        c, endpoint, "flaky", endpoint_url=endpoint.url + "?as=flaky", max_attempts=5, retry_strategy="fixed"
    )
    first = [c.jobs.trigger(job["id"], {"payload": {"i": i}})["id"] for i in range(3)]
    wait_for(lambda: "circuit opened for" in server.logs(), 20, what="the circuit opened")
    assert calls["flaky"] == 3
    later = [c.jobs.trigger(job["id"], {"payload": {"i": i}})["id"] for i in range(3, 10)]

    def held_by_circuit() -> set[str]:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT id::text FROM job_runs WHERE job_id = %s AND status = 'queued' "
                "AND error_class = 'circuit_open' AND attempt = 1",
                (job["id"],),
            ).fetchall()
        return {r[0] for r in rows}

    wait_for(lambda: set(later) <= held_by_circuit(), 4, what="the later runs held by the open circuit")
    assert calls["flaky"] == 3  # no call since the circuit opened
    answers["flaky"] = 200
    ended = {run_id: wait_terminal(c, run_id, 30) for run_id in first + later}
    assert all(r["status"] == "completed" for r in ended.values())
    assert all(ended[r]["attempt"] == 1 for r in later)  # waiting on the circuit spent no attempt
    # the 3 failures, at most one failed half-open probe, then one call per run
    assert 3 + 10 <= calls["flaky"] <= 3 + 1 + 10


def test_circuits_are_counted_across_processes_in_the_shared_table(dsn: str) -> None:
    """record_circuits as two dispatchers use it: failures add up across them, calls failing while
    the circuit cools are not counted, the probe's failure opens it again, a success closes it."""
    from strait_actors.breaker import CircuitDelta, key
    from strait_actors.store import queue

    p, h = key("p", "http://down/")

    async def write(conn: psycopg.AsyncConnection, failures: int, ok: bool = False) -> list[tuple[str, str, float]]:
        return await queue.record_circuits(conn, [CircuitDelta(p, h, failures, ok)], threshold=5, cooldown=2)

    def row(conn: psycopg.Connection) -> Any:
        return conn.execute("SELECT failures, open_until > now() FROM endpoint_circuits").fetchone()

    async def go() -> None:
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as one,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as two,
        ):
            with psycopg.connect(dsn, autocommit=True) as look:
                assert await write(one, 3) == [] and row(look) == (3, None)
                assert [(x[0], x[1]) for x in await write(two, 2)] == [(p, h)]  # 3 + 2: open
                assert row(look) == (5, True)
                await write(one, 4)  # calls that were out when it opened say nothing new
                assert row(look) == (5, True)
                look.execute("UPDATE endpoint_circuits SET open_until = now() - interval '1 s'")  # cooled
                assert len(await write(two, 1)) == 1 and row(look) == (6, True)  # the probe failed
                await write(one, 0, ok=True)
                assert row(look) is None  # closed everywhere: no row

    asyncio.run(go())


def test_a_circuit_another_process_opened_holds_this_ones_runs(
    dsn: str, one_worker: tuple[Server, Any], endpoint: Endpoint
) -> None:
    """A circuit open in the table (opened by another worker process) holds this worker's runs of
    that endpoint without calling it, for its project only; after the cool-down they complete and the
    first success removes the circuit for everyone."""
    _server, c = one_worker
    calls = _by_path(endpoint, {"shared": 200})
    url = endpoint.url + "?as=shared"
    job = make_job(c, endpoint, "shared", endpoint_url=url, max_attempts=3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        project = conn.execute("SELECT project_id FROM jobs WHERE id = %s", (job["id"],)).fetchone()[0]
        conn.execute(
            "INSERT INTO endpoint_circuits (project_id, url_hash, failures, open_until) "
            "VALUES (%s, %s, 5, now() + interval '3 s'), ('another-project', %s, 5, now() + interval '1 h')",
            (project, hashlib.sha256(url.encode()).hexdigest(), hashlib.sha256(url.encode()).hexdigest()),
        )
        written = conn.execute("SELECT clock_timestamp()").fetchone()[0]

        def read_since() -> bool:  # the dispatcher's once-a-second read of the table, after the insert
            return bool(
                conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE query LIKE %s AND state = 'idle' AND state_change > %s",
                    ("%Every endpoint circuit with failures counted%", written),
                ).fetchone()
            )

        wait_for(read_since, 5, what="the dispatcher reading the circuits after the insert")
    runs = [c.jobs.trigger(job["id"], {"payload": {"i": i}})["id"] for i in range(3)]

    def held() -> int:
        with psycopg.connect(dsn) as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM job_runs WHERE job_id = %s AND status = 'queued' "
                    "AND error_class = 'circuit_open' AND attempt = 1",
                    (job["id"],),
                ).fetchone()[0]
            )

    wait_for(lambda: held() == 3, 5, what="the runs held by the shared circuit")
    assert calls["shared"] == 0
    ended = [wait_terminal(c, r, 30) for r in runs]
    assert [r["status"] for r in ended] == ["completed"] * 3 and calls["shared"] == 3
    with psycopg.connect(dsn) as conn:
        left = conn.execute("SELECT project_id FROM endpoint_circuits").fetchall()
    assert left == [("another-project",)]  # closed for this project; the other's is its own
