"""The configuration an API process keeps (jobs, quota rows, API keys) stays until PostgreSQL says
it changed (store/coherence.py, migration 0019): what notifies, what a feed vouches for, how it
falls back to the TTLs when it cannot hear, and two API processes seeing each other's changes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from strait_actors.store import coherence
from strait_actors.store.coherence import Cache, ConfigFeed
from tests.client_helpers import setup
from tests.conftest import SECRET, Endpoint, start_strait, stop_strait
from tests.test_api_processes import process_of

ADMIN = {"Authorization": f"Bearer {SECRET}", "X-Actor-Id": "admin"}


def heard(conn: psycopg.Connection[Any], quiet: float = 0.3) -> list[str]:
    """The strait_config payloads that arrive within `quiet` s of each other (beats left out)."""
    return [n.payload for n in conn.notifies(timeout=quiet) if n.payload != coherence.BEAT]


def test_writes_to_what_the_caches_keep_notify_and_cron_ticks_do_not(
    dsn: str, endpoint: Endpoint, tmp_path: Path
) -> None:
    server = start_strait({"DATABASE_URL": dsn}, tmp_path, mode="api")
    admin, c, key = setup(server)
    try:
        with psycopg.connect(dsn, autocommit=True) as listen, psycopg.connect(dsn, autocommit=True) as db:
            listen.execute("LISTEN strait_config")
            job = c.jobs.create(
                {"project_id": "p1", "name": "J", "slug": "j", "endpoint_url": endpoint.url, "cron": "* * * * *"}
            )
            assert heard(listen) == [f"jobs:{job['id']}"]
            c.jobs.update(job["id"], {"description": "changed"})
            assert heard(listen) == [f"jobs:{job['id']}"]
            db.execute("UPDATE jobs SET next_fire_at = now() + interval '1 hour' WHERE id = %s", (job["id"],))
            assert heard(listen) == [], "a scheduler tick writes next_fire_at only: nothing to forget"
            db.execute("UPDATE jobs SET next_fire_at = now(), paused = true WHERE id = %s", (job["id"],))
            assert heard(listen) == [f"jobs:{job['id']}"]

            r = httpx.put(f"{server.base}/v1/projects/p1/quotas", headers=ADMIN, json={"max_queued_runs": 5})
            assert r.status_code == 200, r.text
            assert heard(listen) == ["project_quotas:p1"]

            (digest,) = db.execute("SELECT key_hash FROM api_keys WHERE id = %s", (key["id"],)).fetchone() or ()
            r = httpx.delete(f"{server.base}/v1/api-keys/{key['id']}", headers=ADMIN)
            assert r.status_code == 200, r.text
            assert heard(listen) == [f"api_keys:{digest}"]

            # a project's pause reaches its jobs' rows (project_paused): each says so
            other = admin.jobs.create({"project_id": "p1", "name": "K", "slug": "k", "endpoint_url": endpoint.url})
            assert heard(listen) == [f"jobs:{other['id']}"]
            db.execute("UPDATE jobs SET project_paused = true WHERE project_id = 'p1'")
            assert sorted(heard(listen)) == sorted([f"jobs:{job['id']}", f"jobs:{other['id']}"])
            db.execute("DELETE FROM jobs WHERE id = %s", (other["id"],))
            assert heard(listen) == [f"jobs:{other['id']}"]
            db.execute("DELETE FROM project_quotas")
            assert heard(listen) == ["project_quotas:p1"]
    finally:
        admin.close()
        c.close()
        stop_strait(server)


def test_every_column_of_jobs_but_next_fire_at_notifies_when_written(dsn: str) -> None:
    """The jobs trigger names its columns (UPDATE OF): a column added later must be named too
    (migration 0019's block run again), or a write to it alone would not reach the caches."""
    with psycopg.connect(dsn) as db:
        columns = {
            r[0]
            for r in db.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        }
        named = {
            r[0]
            for r in db.execute(
                "SELECT a.attname FROM pg_trigger t JOIN pg_attribute a"
                " ON a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr::int2[])"
                " WHERE t.tgrelid = 'jobs'::regclass AND t.tgname = 'jobs_config_changed'"
            )
        }
    assert named == columns - {"next_fire_at"}


def _one_job(dsn: str) -> uuid.UUID:
    """A job row written straight into the database (its project first)."""
    job_id = uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("INSERT INTO projects (id, org_id, name) VALUES ('p1', 'o1', 'P1')")
        db.execute(
            "INSERT INTO jobs (id, project_id, name, slug, endpoint_url, version_id)"
            " VALUES (%s, 'p1', 'J', 'j', 'http://x', 'v1')",
            (job_id,),
        )
    return job_id


class Reads:
    """A loader that counts its reads of the job row."""

    def __init__(self, dsn: str, job_id: uuid.UUID) -> None:
        self.dsn, self.job_id, self.count = dsn, job_id, 0

    async def __call__(self) -> Any:
        self.count += 1
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT paused FROM jobs WHERE id = %s", (self.job_id,))
            return await cur.fetchone()


async def _until(check: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until `check` holds; fails past `within`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def _with_feed(dsn: str, body: Callable[[ConfigFeed], Awaitable[None]]) -> None:
    feed = ConfigFeed(dsn)
    await feed.start()
    try:
        await _until(lambda: feed.watching(time.monotonic()), 10, "the feed vouching")
        await body(feed)
    finally:
        await feed.stop()


def test_a_copy_outlives_its_ttl_until_its_row_changes(dsn: str) -> None:
    job_id = _one_job(dsn)
    reads = Reads(dsn, job_id)

    async def body(feed: ConfigFeed) -> None:
        cache: Cache[uuid.UUID, Any] = Cache(feed, "jobs", 0.2, uuid.UUID)
        await cache.load(job_id, reads)
        await asyncio.sleep(0.6)  # three TTLs
        assert cache.peek(job_id) == (True, (False,)), "vouched for: kept past its TTL"
        assert reads.count == 1
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
            await db.execute("UPDATE jobs SET next_fire_at = now() WHERE id = %s", (job_id,))
            await asyncio.sleep(0.3)
            assert cache.peek(job_id)[0], "a next_fire_at write is not a change of the job"
            await db.execute("UPDATE jobs SET paused = true WHERE id = %s", (job_id,))
            took = await _until(lambda: not cache.peek(job_id)[0], 0.5, "the change forgotten")
        assert took < 0.2, "forgotten once the notification arrived, not at a TTL"
        assert await cache.load(job_id, reads) == (True,)

    asyncio.run(_with_feed(dsn, body))


def test_a_read_that_a_change_raced_is_kept_for_its_ttl_only(dsn: str) -> None:
    """The change commits (and is heard, forgetting nothing) while the old row is on its way: that
    copy must not be vouched for, or it would be kept stale until the next change."""
    job_id = _one_job(dsn)

    async def body(feed: ConfigFeed) -> None:
        cache: Cache[uuid.UUID, Any] = Cache(feed, "jobs", 0.2, uuid.UUID)
        reads = Reads(dsn, job_id)

        async def raced() -> Any:
            old = await reads()
            generation = feed.generation
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
                await db.execute("UPDATE jobs SET paused = true WHERE id = %s", (job_id,))
            await _until(lambda: feed.generation != generation, 2, "the change heard")
            return old

        assert await cache.load(job_id, raced) == (False,)
        assert cache.peek(job_id)[0], "kept for its TTL"
        await _until(lambda: not cache.peek(job_id)[0], 0.5, "the raced copy gone after its TTL")
        assert await cache.load(job_id, reads) == (True,)

    asyncio.run(_with_feed(dsn, body))


def test_a_feed_that_stops_hearing_leaves_copies_to_their_ttl_and_forgets_them_on_reconnect(dsn: str) -> None:
    job_id = _one_job(dsn)
    reads = Reads(dsn, job_id)

    def backend_of(feed: ConfigFeed) -> int:
        assert feed.backend_pid is not None
        return feed.backend_pid

    async def body(feed: ConfigFeed) -> None:
        cache: Cache[uuid.UUID, Any] = Cache(feed, "jobs", 0.2, uuid.UUID)
        await cache.load(job_id, reads)
        await asyncio.sleep(0.3)
        assert cache.peek(job_id)[0], "vouched for past its TTL while the feed hears"
        pid = backend_of(feed)
        # silently dead: the listener's backend stops answering, its socket stays open
        os.kill(pid, signal.SIGSTOP)
        try:
            await _until(lambda: not cache.peek(job_id)[0], coherence.TRUST_SECS + 0.5, "the copy given up")
            await cache.load(job_id, reads)  # read while the feed cannot vouch: kept for the TTL only
            await asyncio.sleep(0.3)
            assert not cache.peek(job_id)[0]
        finally:
            os.kill(pid, signal.SIGCONT)
        await _until(lambda: feed.watching(time.monotonic()), 10, "the feed vouching again")
        await cache.load(job_id, reads)
        assert cache.peek(job_id)[0]
        # a lost connection: whatever the feed kept is forgotten when it is back
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
            await db.execute("SELECT pg_terminate_backend(%s)", (backend_of(feed),))
        await _until(lambda: not feed.watching(time.monotonic()), 2, "the feed down")
        assert not cache.rows, "forgotten at the loss"
        await _until(lambda: feed.watching(time.monotonic()), 10, "the feed back")

    asyncio.run(_with_feed(dsn, body))


def test_the_listener_carries_other_channels_and_tells_them_of_each_reconnect(dsn: str) -> None:
    """The run streams hear strait_run_events on the feed's connection (one listener a process):
    their payloads arrive, and every (re)connect is announced, since what was sent meanwhile is lost."""
    heard: list[str] = []
    connects: list[float] = []

    async def body() -> None:
        feed = ConfigFeed(dsn)
        feed.also("strait_run_events", heard.append, lambda: connects.append(time.monotonic()))
        await feed.start()
        try:
            await _until(lambda: feed.watching(time.monotonic()), 10, "the feed vouching")
            assert len(connects) == 1
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
                await db.execute("SELECT pg_notify('strait_run_events', 'run-1')")
                await _until(lambda: heard == ["run-1"], 2, "the other channel's payload")
                await db.execute("SELECT pg_terminate_backend(%s)", (feed.backend_pid,))
                await _until(lambda: len(connects) == 2, 5, "the reconnect announced")
                await db.execute("SELECT pg_notify('strait_run_events', 'run-2')")
                await _until(lambda: heard == ["run-1", "run-2"], 2, "heard after the reconnect")
        finally:
            await feed.stop()

    asyncio.run(body())


def _pinned(server: Any) -> dict[str, httpx.Client]:
    """A keep-alive client on each of the two API processes (the kernel picks per connection)."""
    found: dict[str, httpx.Client] = {}
    for _ in range(64):
        client = httpx.Client(base_url=server.base, timeout=10)
        who = process_of(client.get("/health"))
        if who in found:
            client.close()
        else:
            found[who] = client
        if len(found) == 2:
            return found
    raise AssertionError("two API processes did not both answer")


@pytest.mark.parametrize("change", ["pause the job", "revoke the key"])
def test_a_change_through_one_api_process_is_seen_by_the_other_at_once(
    change: str, dsn: str, endpoint: Endpoint, tmp_path: Path
) -> None:
    """The other process's copy was read just before the change, so its TTL (1 s for a job, 5 s for
    a key) would keep it; its notification must end it within a fraction of that."""
    env = {"DATABASE_URL": dsn, "API_PROCESSES": "2"}
    server = start_strait(env, tmp_path, mode="api")
    admin, c, key = setup(server)
    one, other = _pinned(server).values()
    job = c.jobs.create({"project_id": "p1", "name": "J", "slug": "j", "endpoint_url": endpoint.url})
    auth = {"Authorization": f"Bearer {key['key']}"}
    try:
        trigger = f"/v1/jobs/{job['id']}/trigger"
        assert other.post(trigger, headers=auth, json={"payload": {}}).status_code == 201  # its copies
        if change == "pause the job":
            r = one.post(f"/v1/jobs/{job['id']}/pause", headers=auth)
            refused = 409
        else:
            r = one.delete(f"/v1/api-keys/{key['id']}", headers=ADMIN)
            refused = 401
        assert r.status_code < 300, r.text
        changed = time.monotonic()
        answers = []
        while time.monotonic() - changed < 0.5:
            answers.append(other.post(trigger, headers=auth, json={"payload": {}}).status_code)
            if answers[-1] == refused:
                break
        assert answers[-1] == refused, f"the other process still answers {answers} 0.5 s after the change"
    finally:
        for client in (one, other):
            client.close()
        admin.close()
        c.close()
        stop_strait(server)
