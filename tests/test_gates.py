"""What a request passes before its handler.

REQUEST_TIMEOUT on one timer (api/deadlines.py): each call times out at its own deadline, a
cancellation from elsewhere stays one, and a held table makes both planes answer 503 in time. The
SDK plane's verified tokens (sdk.TokenCache): a cached token still expires, and still names one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx
import psycopg

from strait_actors import tokens
from strait_actors.aio import Pending, answer
from strait_actors.api.deadlines import Deadlines
from tests.conftest import JWT_KEY, Server, start_strait, stop_strait


async def _timed(deadlines: Deadlines, sleep: float, started: float) -> tuple[str, float]:
    async def work() -> str:
        await asyncio.sleep(sleep)
        return "done"

    try:
        return await deadlines.call(work), time.monotonic() - started
    except TimeoutError:
        return "timeout", time.monotonic() - started


def test_each_call_times_out_at_its_own_deadline() -> None:
    async def go() -> list[tuple[str, float]]:
        d = Deadlines(0.4)
        t0 = time.monotonic()
        first = asyncio.create_task(_timed(d, 10, t0))
        await asyncio.sleep(0.25)
        second = asyncio.create_task(_timed(d, 10, t0))  # due 0.25 s after the first
        quick = asyncio.create_task(_timed(d, 0.05, t0))
        out = [await first, await second, await quick]
        assert d.pending() == 0
        return out

    (a, ta), (b, tb), (c, tc) = asyncio.run(go())
    assert (a, b, c) == ("timeout", "timeout", "done")
    assert 0.4 <= ta < 0.6
    assert 0.65 <= tb < 0.9  # not swept early by the first call's timer
    assert tc < 0.35


def test_a_cancellation_from_elsewhere_stays_a_cancellation_and_the_task_goes_on() -> None:
    async def go() -> tuple[str, str]:
        d = Deadlines(5)
        task = asyncio.create_task(d.call(lambda: asyncio.sleep(10)))
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
            outside = "returned"
        except asyncio.CancelledError:
            outside = "cancelled"

        async def after_timeout() -> str:  # a timed-out call leaves its task usable
            with contextlib.suppress(TimeoutError):
                await d_short.call(lambda: asyncio.sleep(10))
            await asyncio.sleep(0.05)
            return "went on"

        d_short = Deadlines(0.1)
        return outside, await asyncio.create_task(after_timeout())

    assert asyncio.run(go()) == ("cancelled", "went on")


def _queued_run(server: Server) -> str:
    """A run that stays queued (an API-only server dispatches nothing)."""
    with server.client("p") as c:
        c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}).raise_for_status()
        job = c.post(
            "/v1/jobs",
            json={"project_id": "p", "name": "J", "slug": "j", "endpoint_url": "http://127.0.0.1:9/x"},
        ).json()["id"]
        return str(c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"a": 1}}).json()["id"])


def test_a_held_table_times_out_v1_and_sdk_requests_with_503(dsn: str, tmp_path: Any) -> None:
    """Another transaction holds job_runs exclusively: a run read on /v1 and the run's own
    payload read on the SDK plane both answer 503 with Retry-After after REQUEST_TIMEOUT (1 s)."""
    server = start_strait({"DATABASE_URL": dsn, "REQUEST_TIMEOUT_SECS": "1"}, tmp_path, mode="api", processes=1)
    try:
        run = _queued_run(server)
        token = tokens.mint_run_token(JWT_KEY, run, 1, str(uuid.uuid4()), expires_at=None, timeout_secs=60)
        sdk = {"Authorization": f"Bearer {token}", "X-SDK-Version": "2.0.0"}
        with psycopg.connect(dsn) as blocker, server.client("p") as c:
            blocker.execute("LOCK TABLE job_runs IN ACCESS EXCLUSIVE MODE")
            for path, headers in ((f"/v1/runs/{run}", {}), (f"/sdk/v1/runs/{run}/payload", sdk)):
                t0 = time.monotonic()
                r = c.get(path, headers=headers, timeout=20)
                took = time.monotonic() - t0
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.json()["error"]["message"] == "request timed out"
                assert r.headers["Retry-After"] == "1"
                assert 0.9 <= took < 5, (path, took)
            assert r.headers["X-SDK-Version-Accepted"] == "2.0.0"
            blocker.rollback()
            assert c.get(f"/v1/runs/{run}").status_code == 200
            r = c.get(f"/sdk/v1/runs/{run}/payload", headers=sdk)
            assert (r.status_code, r.json()) == (200, {"a": 1})
    finally:
        stop_strait(server)


def test_a_token_that_passed_once_still_expires_and_still_names_its_run(dsn: str, tmp_path: Any) -> None:
    """The first call verifies the token and keeps it; later calls with it are still refused once it
    expires (401), on another run's path (403), and a token of another key never passes (401)."""
    server = start_strait({"DATABASE_URL": dsn}, tmp_path, mode="api", processes=1)
    try:
        run, other = _queued_run(server), str(uuid.uuid4())
        lease = str(uuid.uuid4())
        # exp = now + 3 s: mint_run_token gives timeout + 60 s past `now`
        short = tokens.mint_run_token(JWT_KEY, run, 1, lease, expires_at=None, timeout_secs=0, now=time.time() - 57)
        other_key = "another-key-0123456789abcdef0123"
        forged = tokens.mint_run_token(other_key, run, 1, lease, expires_at=None, timeout_secs=60)

        def status(token: str, run_id: str = run) -> int:
            r = httpx.get(f"{server.base}/sdk/v1/runs/{run_id}/payload", headers={"Authorization": f"Bearer {token}"})
            return r.status_code

        assert [status(short), status(short), status(short, other), status(forged)] == [200, 200, 403, 401]
        time.sleep(max(0.0, tokens.verify_run_token(JWT_KEY, short)["exp"] - time.time()) + 0.2)
        assert [status(short), status(short)] == [401, 401]
    finally:
        stop_strait(server)


def test_no_timer_is_left_behind_when_every_call_ended() -> None:
    secs = 0.2

    async def go() -> tuple[int, bool]:
        d = Deadlines(secs)
        for _ in range(100):
            await d.call(lambda: asyncio.sleep(0))
        await asyncio.sleep(secs + 0.1)  # the one timer fired, found nothing due, and was not set again
        return d.pending(), d._timer is None

    assert asyncio.run(go()) == (0, True)


def test_a_share_given_up_before_it_is_sent_is_withdrawn_and_after_waits_for_the_commit() -> None:
    """aio.Pending under a deadline: not yet sent, the caller's TimeoutError withdraws its share
    (cancelled, so the sender skips it); sent, the caller outlives the deadline and gets what the
    commit decided (its result, or the statement's error), never a guess."""

    async def go() -> list[Any]:
        d = Deadlines(0.1)
        loop = asyncio.get_running_loop()
        unsent, sent_ok, sent_bad = Pending[str](), Pending[str](), Pending[str]()
        sent_ok.sent = sent_bad.sent = True
        loop.call_later(0.3, sent_ok.set_result, "committed")
        loop.call_later(0.3, sent_bad.set_exception, RuntimeError("statement failed"))
        out: list[Any] = []
        for share in (unsent, sent_ok, sent_bad):
            t0 = time.monotonic()
            try:
                out.append(await d.call(lambda share=share: answer(share)))
            except (TimeoutError, RuntimeError) as exc:
                out.append(repr(exc))
            out.append(round(time.monotonic() - t0, 1))
        out.append(unsent.cancelled())
        return out

    got = asyncio.run(go())
    assert got[:2] == ["TimeoutError()", 0.1]
    assert got[2] == "committed" and got[3] >= 0.2  # waited past its deadline for the commit
    assert got[4] == "RuntimeError('statement failed')"
    assert got[6] is True
