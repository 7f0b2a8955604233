"""Every statement that writes many runs locks them in id order.

Two statements that lock the same runs in different orders can each hold one and wait for the
other: PostgreSQL then kills one of them ("deadlock detected"), an SDK caller gets a 503 and a
worker loses a heartbeat. It happened under load between the SDK plane's completions (id order)
and the worker's lease heartbeat (the order of its arrays). The check here needs no race: the
higher of two runs is held by another transaction, and the statement is given the runs highest
first (in the arrays and on disk). A statement that locks in id order has taken the lower run
before it waits for the higher one; one that does not is waiting for the higher one and has
not touched the lower one.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import strait_actors.store
from strait_actors import ids
from strait_actors.model import Outcome
from strait_actors.store import queue, sql
from strait_actors.store.sql import q
from tests.helpers import finish_params, make_job, make_runs, wait_for_a_lock_wait

Runs = list[tuple[str, str]]  # (id, lease) pairs, highest id first


def _worker(dsn: str, work: Callable[[psycopg.AsyncConnection], Any]) -> None:
    async def go() -> None:
        async with await queue.connect_async(dsn) as conn:  # the worker's own connection options
            await work(conn)

    asyncio.run(go())


def _api(dsn: str, name: str, params: dict[str, Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:  # the API pool's (default) options
        conn.execute(q(name), params).fetchall()


def _record_outcomes(dsn: str, runs: Runs) -> None:
    outcomes = [Outcome(i, 1, lease, "completed", "{}", None, None, 0.0, 0) for i, lease in runs]
    _worker(dsn, lambda conn: queue.record_outcomes(conn, outcomes))


def _extend_leases(dsn: str, runs: Runs) -> None:
    _worker(dsn, lambda conn: queue.extend_leases(conn, runs, 30))


def _release_runs(dsn: str, runs: Runs) -> None:
    _worker(dsn, lambda conn: queue.release_runs(conn, runs))


def _token_params(runs: Runs) -> dict[str, Any]:
    return {"ids": [i for i, _ in runs], "attempts": [1] * len(runs), "leases": [lease for _, lease in runs]}


def _sdk_heartbeat(dsn: str, runs: Runs) -> None:
    _api(dsn, "sdk_heartbeat", {**_token_params(runs), "lease_secs": 30})


def _sdk_events(dsn: str, runs: Runs) -> None:
    n = len(runs)
    params = {"types": ["log"] * n, "levels": ["info"] * n, "messages": ["m"] * n, "datas": [Jsonb({})] * n}
    _api(dsn, "sdk_events", {**_token_params(runs), **params})


def _sdk_finish(dsn: str, runs: Runs) -> None:
    _api(dsn, "sdk_finish", finish_params([i for i, _ in runs], runs[0][1]))


WRITERS: dict[str, Callable[[str, Runs], None]] = {
    "record_outcomes": _record_outcomes,
    "extend_leases": _extend_leases,
    "release_runs": _release_runs,
    "sdk_heartbeat": _sdk_heartbeat,
    "sdk_events": _sdk_events,
    "sdk_finish": _sdk_finish,
}


def _insert_executing(conn: psycopg.Connection, job: str, run_ids: list[str], parent: str | None = None) -> Runs:
    """Executing runs under one lease, written to disk in the order given."""
    lease = str(uuid.uuid4())
    make_runs(conn, job, 0, "executing", run_ids=run_ids, attempt=1, lease_id=lease, parent_run_id=parent)
    return [(i, lease) for i in run_ids]


def _locks_lower_first(dsn: str, write: Callable[[], None], low: str, high: str) -> bool:
    """Whether `write`, waiting for `high` (held here), already holds `low`."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            write()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as probe:
        holder.execute("SELECT 1 FROM job_runs WHERE id = %s FOR UPDATE", (high,))
        writer = threading.Thread(target=run)
        writer.start()
        try:
            wait_for_a_lock_wait(probe, "the writer waiting for the held run")
            try:
                probe.execute("SELECT 1 FROM job_runs WHERE id = %s FOR UPDATE NOWAIT", (low,))
                holds_low = False
            except psycopg.errors.LockNotAvailable:
                holds_low = True
        finally:
            holder.rollback()
            writer.join(10)
    assert not writer.is_alive() and not errors, errors
    return holds_low


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_batch_writers_of_runs_lock_them_in_id_order(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        high, mid, low = sorted((ids.new_id() for _ in range(3)), reverse=True)
        runs = _insert_executing(conn, job, [high, mid, low])
    assert _locks_lower_first(dsn, lambda: WRITERS[name](dsn, runs), low, high), (
        f"{name} waits for the highest run before it locks the lowest: it does not lock in id order"
    )


def test_a_tree_cancel_locks_its_runs_in_id_order(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        root = ids.new_id()
        high, low = sorted((ids.new_id() for _ in range(2)), reverse=True)
        _insert_executing(conn, job, [root])
        _insert_executing(conn, job, [high, low], parent=root)

    def cancel() -> None:
        _api(dsn, "cancel_run", {"id": root, "actor": "test"})

    assert _locks_lower_first(dsn, cancel, low, high), "cancel_run does not lock its tree in id order"


def test_closing_the_parks_of_returned_calls_locks_the_runs_in_id_order(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        high, mid, low = sorted((ids.new_id() for _ in range(3)), reverse=True)
        runs = _insert_executing(conn, job, [high, mid, low])
        conn.execute(  # test set-up: each call parked its run (sdk_wait_for_event's columns)
            "UPDATE job_runs SET status = 'waiting', parked_lease_id = lease_id, lease_id = NULL,"
            " parked_open_until = now() + interval '1 minute', lease_expires_at = NULL WHERE id = ANY(%s::uuid[])",
            ([i for i, _ in runs],),
        )
    outcomes = [Outcome(i, 1, lease, "completed", "{}", None, None, 0.0, 0) for i, lease in runs]

    def close() -> None:
        _worker(dsn, lambda conn: queue.close_parked_dispatches(conn, outcomes))

    assert _locks_lower_first(dsn, close, low, high), "close_parked_dispatches does not lock in id order"


def test_the_reaper_frees_held_runs_it_can_lock_and_skips_one_held_elsewhere(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        held = make_runs(conn, job, 3, held="job")
        with psycopg.connect(dsn) as holder:
            holder.execute("SELECT 1 FROM job_runs WHERE id = %s FOR UPDATE", (held[0],))
            with queue.connect(dsn) as worker:
                assert queue.release_held_runs(worker) == 2, "the two runs nobody holds, without waiting"
        with queue.connect(dsn) as worker:
            assert queue.release_held_runs(worker) == 1, "the next pass frees the one that was held"
        assert conn.execute("SELECT count(*) FROM job_runs WHERE held IS NOT NULL").fetchone() == (0,)


# Every statement that writes job_runs, by how it stays out of lock cycles. A new one must be put in
# one of these (the test below fails until it is): in id order (and in WRITERS above, which checks
# it), never waiting (SKIP LOCKED), one run only, or a reason.
IN_ID_ORDER = {*WRITERS, "cancel_run", "cron_cancel_overlapped", "send_events", "close_parked_dispatches"}
SKIPS_LOCKED = {
    "claim_runs",
    "claim_runs_plain",
    "reap_lost_leases",
    "expire_runs",
    "release_dependency_waits_of",
    "release_dependency_waits",
    "fail_expired_dependency_waits",
    "dlq_replay",
    "expire_waits",
    "requeue_stale_dequeued",
    "age_queued_runs",
    "release_held_runs",
    "release_resumed_runs",
}
ONE_RUN = {
    "release_idempotency_key",
    "flush_batch",
    "sdk_annotate",
    "sdk_wait_for_event",
    "cancel_event",
    "sdk_spawn",
}
OTHERWISE = {
    "mark_dependency_waits": "runs of its own transaction's INSERT, which no other transaction sees yet",
    "sync_job_gates": "at most 1000 of a job's held runs on its update; the claim (SKIP LOCKED) is the only "
    "frequent writer of queued runs, and release_held_runs is the backstop",
    "release_jobs_runs": "as sync_job_gates, for a group's or a project's resume",
    "resume_lost_waits": "a safety net over runs left waiting; nothing else writes them in batches",
}


def test_every_writer_of_runs_is_classed_for_lock_order() -> None:
    text = (Path(strait_actors.store.__file__).parent / "queries.sql").read_text()
    bodies = sql.parse(text)  # a derived statement (claim_runs_plain) as it runs
    # an UPDATE, or a locking read (of the statement's `r`, or of each call's run in a LATERAL probe)
    lock = re.compile(r"UPDATE job_runs|FROM job_runs (r|x)\b[^;]*?FOR (NO KEY )?UPDATE( OF r)?\b", re.S)
    writers = {name for name, body in bodies.items() if lock.search(body)}
    classed = IN_ID_ORDER | SKIPS_LOCKED | ONE_RUN | set(OTHERWISE)
    assert writers - classed == set(), "statements that write runs: class them above"
    assert classed - writers == set(), "classed statements that no longer write runs"
    for name in SKIPS_LOCKED:
        assert "SKIP LOCKED" in bodies[name], name
    for name in ONE_RUN:
        assert not re.search(r"%\(\w+\)[sb]::\w+\[\]", bodies[name]), f"{name} takes arrays of runs"
