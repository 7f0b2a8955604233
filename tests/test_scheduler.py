"""The cron Scheduler against real PostgreSQL (engine.md §7.1): a due tick fires once however many
schedulers run, the latest missed tick fires once after downtime, overlap policies, off and limited
jobs skip; and end to end, a strait worker fires a tick and the run reaches the endpoint."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import redis
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from strait_actors import cron
from strait_actors.actors.base import TreeContext
from strait_actors.actors.scheduler import Scheduler
from strait_actors.messages import Tick
from strait_actors.ratelimits import Limit, SyncRedisRateLimits, limits_of
from strait_actors.settings import Settings
from strait_actors.store import queue, schedules
from tests.client_helpers import make_job as api_job
from tests.client_helpers import wait_terminal
from tests.conftest import SECRET, Endpoint, Server, wait_for
from tests.helpers import make_job, make_runs

T = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # a tick of every schedule below


def due_job(conn: psycopg.Connection, expr: str = "*/5 * * * *", at: datetime = T, **cols: Any) -> str:
    return make_job(conn, "http://x/", cron=expr, next_fire_at=at, **cols)


def runs_of(conn: psycopg.Connection, job: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM job_runs WHERE job_id = %s ORDER BY created_at", (job,)).fetchall()


def next_fire_at(conn: psycopg.Connection, job: str) -> datetime:
    row = conn.execute("SELECT next_fire_at FROM jobs WHERE id = %s", (job,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_a_due_tick_fires_once_and_the_next_is_armed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = due_job(conn)
        fired = schedules.fire_due(conn, T + timedelta(seconds=10))
        assert [(f.job_id, f.fire_at, f.skipped) for f in fired] == [(job, T, None)]
        assert schedules.fire_due(conn, T + timedelta(seconds=20)) == []  # taken: nothing due
        [run] = runs_of(conn, job)
        assert str(run["id"]) == fired[0].run_id and run["status"] == "queued"
        assert (run["idempotency_key"], run["triggered_by"], run["created_by"]) == (
            cron.fire_key(job, T),
            "cron",
            "system:cron",
        )
        assert (run["payload"], run["priority"], run["expires_at"]) == ({}, 0, None)  # TTL only when set
        assert next_fire_at(conn, job) == T + timedelta(minutes=5)


def test_after_downtime_the_latest_missed_tick_fires_once(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = due_job(conn, at=T - timedelta(days=2))  # 576 ticks missed
        now = T + timedelta(minutes=7)
        [f] = schedules.fire_due(conn, now)
        assert (f.fire_at, f.skipped) == (T + timedelta(minutes=5), None)
        assert len(runs_of(conn, job)) == 1
        assert next_fire_at(conn, job) == T + timedelta(minutes=10)


def test_many_schedulers_fire_each_tick_once(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        jobs = [due_job(conn, "* * * * *") for _ in range(300)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            with queue.connect(dsn) as conn:
                for minute in range(3):  # three ticks of every job
                    barrier.wait()
                    while schedules.fire_due(conn, T + timedelta(minutes=minute, seconds=1)):
                        pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT job_id::text, idempotency_key FROM job_runs").fetchall()
    assert len(rows) == 900 and len(set(rows)) == 900  # asserted from the database: no tick twice
    keys = {(j, cron.fire_key(j, T + timedelta(minutes=m))) for j in jobs for m in range(3)}
    assert set(rows) == keys


def test_overlap_policies(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        skip = due_job(conn, cron_overlap_policy="skip")
        cancel = due_job(conn, cron_overlap_policy="cancel_running")
        allow = due_job(conn)
        for job in (skip, cancel, allow):
            make_runs(conn, job, 1, status="executing")
            make_runs(conn, job, 1, status="queued")
            make_runs(conn, job, 1, status="completed")
        fired = {f.job_id: f for f in schedules.fire_due(conn, T)}
        assert fired[skip].skipped == "overlap" and fired[skip].run_id is None
        assert fired[allow].run_id and fired[cancel].run_id
        assert sorted(r["status"] for r in runs_of(conn, skip)) == ["completed", "executing", "queued"]
        assert sorted(r["status"] for r in runs_of(conn, allow)) == ["completed", "executing", "queued", "queued"]
        statuses = {str(r["id"]): r["status"] for r in runs_of(conn, cancel)}
        assert statuses.pop(fired[cancel].run_id) == "queued"
        assert sorted(statuses.values()) == ["canceled", "canceled", "completed"]
        events = conn.execute(
            "SELECT e.data->>'from', e.data->>'actor' FROM run_events e JOIN job_runs r ON r.id = e.run_id "
            "WHERE r.job_id = %s AND e.data->>'to' = 'canceled' ORDER BY 1",
            (cancel,),
        ).fetchall()
        assert events == [("executing", "system:cron"), ("queued", "system:cron")]
        # every job's next tick is armed, skipped or not
        assert {next_fire_at(conn, j) for j in (skip, cancel, allow)} == {T + timedelta(minutes=5)}


def test_off_and_limited_jobs_skip_their_ticks(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        off = due_job(conn, enabled=False)
        paused = due_job(conn, paused=True)
        limited = due_job(conn, rate_limit_max=1, rate_limit_window_secs=3600)
        make_runs(conn, limited, 1, status="completed")
        fired = {f.job_id: f.skipped for f in schedules.fire_due(conn, T)}
        assert fired == {off: "job_off", paused: "job_off", limited: "rate_limit"}
        assert conn.execute("SELECT count(*) FROM job_runs WHERE triggered_by = 'cron'").fetchone() == (0,)
        # a disabled job's schedule still moves on: enabled again, it does not fire a backlog
        assert next_fire_at(conn, off) == T + timedelta(minutes=5)


def test_jobs_are_armed_from_their_last_change(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", cron="0 9 * * *", timezone="Asia/Tokyo")
        changed = conn.execute("SELECT updated_at FROM jobs WHERE id = %s", (job,)).fetchone()[0]  # type: ignore[index]
        assert schedules.arm(conn) == 1
        assert next_fire_at(conn, job) == cron.next_fire("0 9 * * *", "Asia/Tokyo", changed)
        assert next_fire_at(conn, job).astimezone(cron.zone("Asia/Tokyo")).hour == 9
        assert schedules.arm(conn) == 0


def test_the_scheduler_wakes_for_the_earliest_armed_tick_between_clock_ticks(dsn: str, settings: Settings) -> None:
    """One Tick from outside, before anything is due, and a clock interval far longer than the wait:
    the Scheduler's own wake-up fires the tick when it comes, not earlier and not a clock tick later."""
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = due_job(conn, "* * * * *", at=due)
        assert schedules.next_due(conn) == due
        ctx = TreeContext(settings=dataclasses.replace(settings, scheduler_interval_secs=30), dsn=dsn, worker_id="w")
        ref = Scheduler.start(ctx)
        try:
            ref.tell(Tick())
            [run] = wait_for(lambda: runs_of(conn, job), timeout=10, what="the tick fired by the wake-up")
            assert run["idempotency_key"] == cron.fire_key(job, due)
            assert due <= run["created_at"] < due + timedelta(seconds=5)
        finally:
            ref.stop()


def test_a_worker_fires_cron_ticks_end_to_end(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients
    job = api_job(c, endpoint, cron="* * * * *")
    with psycopg.connect(strait.env["DATABASE_URL"], autocommit=True) as conn:
        armed = wait_for(lambda: next_fire_at(conn, job["id"]), what="the job armed")
        assert armed.second == 0 and armed > datetime.now(UTC) - timedelta(minutes=1)
        # as if the tick were due now: the scheduler fires it within its interval
        conn.execute("UPDATE jobs SET next_fire_at = now() - interval '1 second' WHERE id = %s", (job["id"],))
        run_id = wait_for(lambda: c.runs.list(query={"job_id": job["id"]})["data"], what="a cron run")[0]["id"]
        run = wait_terminal(c, run_id)
        assert run["status"] == "completed" and run["triggered_by"] == "cron"
        assert endpoint.run_ids() == [run_id]
        # a changed schedule is armed again, in its new time zone
        c.jobs.update(job["id"], {"cron": "0 12 * * *", "timezone": "Asia/Kolkata"})
        again = wait_for(
            lambda: (t := next_fire_at(conn, job["id"])) and t.astimezone(cron.zone("Asia/Kolkata")).hour == 12 and t,
            what="re-armed",
        )
        assert again.astimezone(cron.zone("Asia/Kolkata")).minute == 0


def test_a_run_asked_outside_its_execution_window_waits_for_the_next_opening(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    """engine.md §2.6: inside the window a run goes out as asked; outside, `delayed` to the next
    opening (in the job's zone, else its project's, else UTC), for single, bulk and dry-run triggers."""
    _, c, _ = clients
    new_year = "0 0 1 1 *"
    job = api_job(c, endpoint, "nye", execution_window_cron=new_year, timezone="Pacific/Auckland")
    t0 = datetime.now(UTC)
    run = c.runs.get(c.jobs.trigger(job["id"], {"payload": {}})["id"])
    opening = cron.next_fire(new_year, "Pacific/Auckland", t0)
    assert run["status"] == "delayed" and datetime.fromisoformat(run["scheduled_at"]) == opening
    assert opening.astimezone(cron.zone("Pacific/Auckland")).strftime("%m-%d %H:%M") == "01-01 00:00"
    bulk = c.jobs.bulk_trigger(job["id"], {"items": [{"payload": {"i": 1}}, {"payload": {"i": 2}}]})
    assert {r["status"] for r in bulk["results"]} == {"delayed"}
    dry = c.jobs.trigger(job["id"], {"payload": {}, "dry_run": True})
    assert datetime.fromisoformat(dry["scheduled_at"]) == opening
    # asked for later, outside the window: the first opening after the time asked
    later = (opening + timedelta(hours=1)).isoformat()
    run = c.runs.get(c.jobs.trigger(job["id"], {"payload": {}, "scheduled_at": later})["id"])
    assert datetime.fromisoformat(run["scheduled_at"]) == cron.next_fire(new_year, "Pacific/Auckland", opening)

    # always open: out at once; asked for later: as asked
    open_job = api_job(c, endpoint, "open", execution_window_cron="* * * * *")
    now_run = c.jobs.trigger(open_job["id"], {"payload": {}})["id"]
    assert wait_terminal(c, now_run)["status"] == "completed"
    ahead = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    run = c.runs.get(c.jobs.trigger(open_job["id"], {"payload": {}, "scheduled_at": ahead.isoformat()})["id"])
    assert run["status"] == "delayed" and datetime.fromisoformat(run["scheduled_at"]) == ahead

    # no zone on the job: the project's
    admin_h = {"Authorization": f"Bearer {SECRET}"}
    assert httpx.put(
        f"{strait.base}/v1/projects/p1/quotas", headers=admin_h, json={"timezone": "Asia/Tokyo"}
    ).is_success
    nine = api_job(c, endpoint, "nine", execution_window_cron="0 9 * * *")
    run = c.runs.get(c.jobs.trigger(nine["id"], {"payload": {}})["id"])
    at = datetime.fromisoformat(run["scheduled_at"]).astimezone(cron.zone("Asia/Tokyo"))
    assert (at.hour, at.minute) == (9, 0) and run["status"] == "delayed"
    assert endpoint.run_ids() == [now_run]  # nothing outside its window went out


def test_version_policy_decides_which_settings_a_queued_run_dispatches_with(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    """engine.md §3.1: runs enqueued before an update dispatch with their version's settings under
    `pin`, with the current ones under `latest`, and under `minor` with the current ones only when
    the new version is backwards compatible. Runs enqueued after the update use the new version."""
    _, c, _ = clients
    cases = {
        "pin": ({"version_policy": "pin"}, {}, "v=1"),
        "latest": ({"version_policy": "latest"}, {}, "v=2"),
        "minor-breaking": ({"version_policy": "minor"}, {}, "v=1"),
        "minor-compatible": ({"version_policy": "minor"}, {"backwards_compatible": True}, "v=2"),
    }
    soon = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    runs: dict[str, tuple[str, str]] = {}
    for slug, (create, update, _) in cases.items():
        job = api_job(c, endpoint, slug, endpoint_url=endpoint.url + "?v=1", timeout_secs=7, **create)
        early = c.jobs.trigger(job["id"], {"payload": {}, "scheduled_at": soon})["id"]  # waits in the queue
        c.jobs.update(job["id"], {"endpoint_url": endpoint.url + "?v=2", **update})
        late = c.jobs.trigger(job["id"], {"payload": {}})["id"]
        runs[slug] = (early, late)
    for early, late in runs.values():
        assert wait_terminal(c, early)["status"] == "completed" and wait_terminal(c, late)["status"] == "completed"
    query = {r["headers"]["X-Run-ID"]: r["query"] for r in endpoint.requests}
    for slug, (_, _, expected) in cases.items():
        early, late = runs[slug]
        assert (query[early], query[late]) == (expected, "v=2"), slug


def test_with_redis_ticks_are_counted_where_the_api_counts_triggers(dsn: str, redis_url: str) -> None:
    """REDIS_URL set: the API counts rate limits in Redis, so a tick is judged there too and its run
    joins the same windows; a tick that makes no run gives its place back; no PostgreSQL hits."""
    client = redis.Redis.from_url(redis_url)
    limits = SyncRedisRateLimits(client)
    full_key = [{"key": "api", "max": 1, "window_secs": 600}]
    room_key = [{"key": "room", "max": 5, "window_secs": 600}]
    with psycopg.connect(dsn, autocommit=True) as conn:
        full = due_job(conn, rate_limit_keys=Jsonb(full_key))
        room = due_job(conn, rate_limit_keys=Jsonb(room_key))
        # over its limit by PostgreSQL's count (a run in the window), not by Redis's: Redis judges
        counted_in_redis = due_job(conn, rate_limit_max=1, rate_limit_window_secs=3600)
        make_runs(conn, counted_in_redis, 1, status="completed")
        off = due_job(conn, enabled=False, rate_limit_keys=Jsonb(room_key))

        def windows(job: str, keys: Any = None, rate_max: int | None = None) -> list[Limit]:
            row = {"id": job, "project_id": "p", "rate_limit_max": rate_max, "rate_limit_window_secs": 3600}
            return limits_of({**row, "rate_limit_keys": keys})

        assert limits.take(windows(full, full_key), ["an-api-trigger"]) is True  # the key's one place
        fired = {f.job_id: f for f in schedules.fire_due(conn, T, limits)}
        assert {j: f.skipped for j, f in fired.items()} == {
            full: "rate_limit",
            room: None,
            counted_in_redis: None,
            off: "job_off",
        }
        [room_window] = windows(room, room_key)
        assert client.zrange(room_window.redis_key, 0, -1) == [fired[room].run_id.encode()]  # type: ignore[union-attr]
        [job_window] = windows(counted_in_redis, rate_max=1)
        assert client.zcard(job_window.redis_key) == 1
        [full_window] = windows(full, full_key)
        assert client.zrange(full_window.redis_key, 0, -1) == [b"an-api-trigger"]
        assert conn.execute("SELECT count(*) FROM rate_limit_hits").fetchone() == (0,)
    # the off job's tick was admitted (the room key had room) and made no run: its place is back
    assert client.zcard(room_window.redis_key) == 1
    client.close()
