"""The reaper's passes for waits (engine.md §3.3, §6), on the database directly: waits past their
timeout, runs stale in `dequeued`, runs whose wait was answered without resuming them. Each is
bounded and fenced: a run that moved on meanwhile is left alone."""

from __future__ import annotations

import asyncio
import threading
import uuid

import psycopg

from strait_actors import ids
from strait_actors.model import Outcome
from strait_actors.store import events, queue
from tests.helpers import make_job, make_runs, wait_for_a_lock_wait


def _trigger(conn: psycopg.Connection, run_id: str, key: str, status: str = "waiting", **cols: str) -> None:
    values = {"id": ids.new_id(), "key": key, "run": run_id, "status": status, "expires": "2100-01-01", **cols}
    conn.execute(
        "INSERT INTO event_triggers (id, event_key, project_id, source_type, job_run_id, status, timeout_secs, "
        "expires_at, received_at) VALUES (%(id)s, %(key)s, 'p', 'job_run', %(run)s, %(status)s, 60, "
        "%(expires)s, %(received)s)",
        {"received": None, **values},
    )


def test_expired_waits_time_out_their_runs_once(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        due, later, moved_on = make_runs(conn, job, 3, status="waiting")
        _trigger(conn, due, "a", expires="2000-01-01")
        _trigger(conn, later, "b")
        _trigger(conn, moved_on, "c", expires="2000-01-01")
        conn.execute("UPDATE job_runs SET status = 'completed' WHERE id = %s", (moved_on,))  # test set-up
        assert events.expire_waits(conn) == (2, 1)
        assert events.expire_waits(conn) == (0, 0)
        rows = dict(conn.execute("SELECT id::text, status FROM job_runs").fetchall())
        assert rows == {due: "timed_out", later: "waiting", moved_on: "completed"}
        waits = dict(conn.execute("SELECT event_key, status FROM event_triggers").fetchall())
        assert waits == {"a": "timed_out", "b": "waiting", "c": "timed_out"}
        (error,) = conn.execute("SELECT error FROM job_runs WHERE id = %s", (due,)).fetchone() or (None,)
        assert error == "event trigger timed out"


def test_stale_dequeued_runs_go_back_to_the_queue(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        (stale,) = make_runs(conn, job, 1, status="dequeued", started_at="2000-01-01")
        (fresh,) = make_runs(conn, job, 1, status="dequeued", started_at="2100-01-01")
        assert events.requeue_stale_dequeued(conn, 20) == 1
        rows = dict(conn.execute("SELECT id::text, status FROM job_runs").fetchall())
        assert rows == {stale: "queued", fresh: "dequeued"}


def test_a_wait_answered_without_resuming_its_run_is_resumed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        lost, recent, still_held, awaiting = make_runs(conn, job, 4, status="waiting")
        old = "now() - interval '1 minute'"
        for run, key in ((lost, "l"), (still_held, "h"), (awaiting, "w")):
            _trigger(conn, run, key, status="received")
            conn.execute(f"UPDATE event_triggers SET received_at = {old} WHERE event_key = %s", (key,))
        _trigger(conn, recent, "r", status="received")
        conn.execute("UPDATE event_triggers SET received_at = now() WHERE event_key = 'r'")
        _trigger(conn, still_held, "h2")  # another wait still open: not resumed
        conn.execute("UPDATE job_runs SET awaiting_children = 1 WHERE id = %s", (awaiting,))
        assert events.resume_lost_waits(conn) == 1
        rows = dict(conn.execute("SELECT id::text, status FROM job_runs").fetchall())
        assert rows == {lost: "queued", recent: "waiting", still_held: "waiting", awaiting: "waiting"}
        assert events.resume_lost_waits(conn) == 0


def test_a_resume_held_for_a_call_still_going_is_left_to_it_and_done_once_its_lease_passed(dsn: str) -> None:
    """Migration 0016: a resume that came while the parking call went on is that call's to do when
    it returns; the pass does it only past the call's lease (its worker is gone), with its key."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        still_calling, worker_gone = make_runs(conn, job, 2, status="waiting")
        old = "now() - interval '1 minute'"
        for run, key, until in ((still_calling, "o", "now() + interval '1 minute'"), (worker_gone, "g", "now()")):
            _trigger(conn, run, key, status="received")
            conn.execute(f"UPDATE event_triggers SET received_at = {old} WHERE event_key = %s", (key,))
            conn.execute(f"UPDATE job_runs SET resume_held = %s, parked_open_until = {until} WHERE id = %s", (key, run))
        assert events.resume_lost_waits(conn) == 1
        read = "SELECT id::text, status, resume_event_key, resume_held FROM job_runs"
        rows = {r[0]: r[1:] for r in conn.execute(read)}
        assert rows == {still_calling: ("waiting", None, "o"), worker_gone: ("queued", "g", None)}


def test_a_call_that_returns_while_its_run_s_last_child_ends_resumes_the_run(dsn: str) -> None:
    """The park's close waits for the child's end that holds the run, and decides on the run as that
    end left it (its resume held): resumed. Deciding on the statement's older snapshot skipped it,
    and the run then waited for the Reaper's backstop."""
    lease = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        (run,) = make_runs(
            conn,
            job,
            1,
            status="waiting",
            attempt=1,
            parked_lease_id=lease,
            awaiting_children=1,
            parked_open_until="2100-01-01",
        )
    closed: list[int] = []

    def close() -> None:
        async def go() -> None:
            async with await queue.connect_async(dsn) as conn:
                closed.append(
                    await queue.close_parked_dispatches(
                        conn, [Outcome(run, 1, lease, "completed", "{}", None, None, 0.0, 0)]
                    )
                )

        asyncio.run(go())

    with psycopg.connect(dsn) as child_end, psycopg.connect(dsn, autocommit=True) as probe:
        # the last child's end, not yet committed: it holds the run, its resume held for the open call
        child_end.execute(
            "UPDATE job_runs SET awaiting_children = 0, resume_held = 'spawn-await' WHERE id = %s", (run,)
        )
        closer = threading.Thread(target=close)
        closer.start()
        wait_for_a_lock_wait(probe, "the close waiting for the child's end")
        child_end.commit()
        closer.join(10)
        row = probe.execute(
            "SELECT status, resume_event_key, resume_held, parked_open_until FROM job_runs WHERE id = %s", (run,)
        ).fetchone()
    assert closed == [1]
    assert row == ("queued", "spawn-await", None, None)
