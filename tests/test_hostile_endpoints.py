"""Whatever an endpoint answers, its run ends and its neighbours' runs are untouched."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp import web

from strait_actors import fsm, outbound
from strait_actors.actors.tree import WorkerTree
from strait_actors.model import Outcome
from strait_actors.settings import Settings
from strait_actors.store import queue
from strait_actors.store.queue import Queue
from strait_actors.store.sql import make_pool
from tests.conftest import Endpoint, wait_for
from tests.helpers import make_job, make_runs, statuses

# 2xx bodies a JSON parser may take but PostgreSQL's jsonb refuses, or that would not read back
HOSTILE: list[bytes] = [
    b'{"x": 1e-99999}',  # underflow: parsers give 0.0, numeric cannot hold it
    b'{"x": 0.' + b"1" * 17000 + b"}",  # a fraction longer than numeric's 16383 digits
    b"1e400",  # beyond a double
    b"-1" + b"0" * 400,  # an integer of 401 digits
    b"[" + b"1" * 140000 + b"]",  # beyond numeric's 131072 digits
    b'["\\ud800"]',  # a lone surrogate escape
    b'"a\\u0000b"',  # a NUL escape
    b"[" * 5000 + b"]" * 5000,  # nesting beyond any parser's limit
    b"\xff\xfe not utf-8",
    b'{"ok": "\x00"}',  # a raw NUL byte (invalid JSON)
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_result_json_keeps_only_what_postgres_holds_and_reads_back(body: bytes, dsn: str) -> None:
    text = outbound.result_json(body)
    assert text is not None
    with psycopg.connect(dsn) as conn:
        (stored,) = conn.execute("SELECT %s::jsonb::text", (text,)).fetchone()  # type: ignore[misc]
    orjson.loads(stored)  # what PostgreSQL gives back parses again (the API renders it)


def test_ordinary_answers_are_kept_as_they_are() -> None:
    assert outbound.result_json(b'{"b": 1, "a": [1.5, "e-99999"]}') == '{"b": 1, "a": [1.5, "e-99999"]}'
    assert outbound.result_json(b"  ") is None
    assert outbound.result_json(b"plain text") == '"plain text"'


def _outcome(run_id: str, lease: str, result: str | None, error: str | None = None) -> Outcome:
    return Outcome(run_id, 1, lease, fsm.S.COMPLETED, result, error, None, 0.0, 0)


def test_a_batch_postgres_refuses_is_split_and_no_run_is_stranded(dsn: str) -> None:
    """The store's own fallback, below outbound's normalisation: results it never saw checked."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        make_runs(conn, job, 9)
        runs = Queue(conn, worker_id="w", lease_secs=30).claim(9).runs
    bad = {runs[2].id: '{"x": 1e-99999}', runs[6].id: '{"y": 1e-99999}'}
    outcomes = [_outcome(r.id, r.lease_id, bad.get(r.id, '{"ok": true}')) for r in runs]
    outcomes[4] = _outcome(runs[4].id, runs[4].lease_id, None, error="nul \x00 in an error")

    async def go() -> set[str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            return await queue.record_outcomes(aconn, outcomes)

    assert asyncio.run(go()) == {r.id for r in runs}
    with psycopg.connect(dsn) as conn:
        assert statuses(conn) == {"completed": 9}
        got = {str(r[0]): (r[1], r[2]) for r in conn.execute("SELECT id, result, error FROM job_runs")}
    assert got[runs[2].id] == ('{"x": 1e-99999}', None), "kept as the text it was"
    assert got[runs[6].id] == ('{"y": 1e-99999}', None)
    assert got[runs[4].id] == (None, "nul  in an error")
    assert got[runs[0].id] == ({"ok": True}, None)


def test_hostile_answers_in_one_batch_with_hundreds_of_good_ones(
    dsn: str, settings: Settings, endpoint: Endpoint
) -> None:
    """The worker end to end: every run ends completed, each good result intact, each read back."""

    def answer(seen: dict[str, Any]) -> web.Response:
        n = orjson.loads(seen["body"])["n"]
        body = HOSTILE[n // 3 % len(HOSTILE)] if n % 3 == 0 else b'{"n": %d}' % n
        return web.Response(body=body, content_type="application/json")

    endpoint.behave = answer
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, endpoint.url)
        for n in range(303):
            make_runs(conn, job, 1, payload=orjson.dumps({"n": n}).decode())
    tree = WorkerTree(settings, dsn)
    tree.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_for(lambda: statuses(conn) == {"completed": 303}, timeout=60, what="all 303 completed")
            rows = conn.execute("SELECT payload, result FROM job_runs").fetchall()  # every result reads back
        for payload, result in rows:
            if payload["n"] % 3:
                assert result == {"n": payload["n"]}
    finally:
        tree.stop()


def test_the_api_reads_back_every_stored_answer(dsn: str) -> None:
    """Results as outbound stores them render through the API's JSON path."""

    async def go() -> None:
        pool = make_pool(dsn, 2)
        await pool.open()
        try:
            async with pool.connection() as conn:
                for body in HOSTILE:
                    cur = await conn.execute("SELECT %s::jsonb AS r", (outbound.result_json(body),))
                    row: Any = await cur.fetchone()
                    orjson.dumps(row["r"])
        finally:
            await pool.close()

    asyncio.run(go())


def test_connection_errors_are_classed_by_type_not_by_words_in_the_host_name() -> None:
    """A refused call to zoom.invalid is a retryable connection error, not an "oom"."""
    from strait_actors.httpclient import HttpClient
    from strait_actors.model import ClaimedRun

    run = ClaimedRun(
        id=str(uuid.uuid4()), job_id=str(uuid.uuid4()), project_id="p", attempt=1, payload="{}",
        lease_id=str(uuid.uuid4()),
        expires_at=None, previous_error=None, endpoint_url="http://zoom.invalid:1/boom-oom", timeout_secs=5,
        max_attempts=3, retry_strategy="fixed", retry_delays_secs=None, retry_priority_boost=0, signing_secret=None,
    )  # fmt: skip

    async def go() -> Outcome:
        client = HttpClient(allow_private=True)
        try:
            return await outbound.call(client, run, jwt_key="k" * 32, http_timeout_cap=5, max_response_bytes=10)
        finally:
            await client.close()

    outcome = asyncio.run(go())
    assert (outcome.to_status, outcome.error_class) == (fsm.S.QUEUED, "connection"), outcome.error
