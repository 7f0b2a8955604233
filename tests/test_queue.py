"""The queue's SQL against real PostgreSQL: claims, fences, promotion, reaping, expiry."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid

import psycopg
import pytest

from strait_actors.model import Outcome
from strait_actors.store import queue, transitions
from strait_actors.store.queue import Queue
from strait_actors.store.sql import derive, parse, q
from tests.conftest import wait_for
from tests.helpers import make_job, make_runs, statuses


def test_claimers_never_share_a_run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        make_runs(conn, job, 2000)
    claimed: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def claimer(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            q = Queue(conn, worker_id=f"w{i}", lease_secs=30)
            barrier.wait()
            while True:
                got = q.claim(37).runs
                if not got:
                    return
                claimed[i].extend(r.id for r in got)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [r for c in claimed for r in c]
    assert len(every) == 2000
    assert len(set(every)) == 2000, "a run was claimed twice"
    assert sum(1 for c in claimed if c) >= 2, "the claimers did not share the work"
    with psycopg.connect(dsn) as conn:
        assert statuses(conn) == {"executing": 2000}
        events = conn.execute("SELECT count(*) FROM run_events WHERE message = 'queued -> executing'").fetchone()
        assert events == (2000,)


def test_claim_orders_by_priority_then_age(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        old = make_runs(conn, job, 1)
        new = make_runs(conn, job, 1)
        high = make_runs(conn, job, 1, priority=5)
        got = [r.id for r in Queue(conn, worker_id="w", lease_secs=30).claim(3).runs]
    assert got[0] == high[0]
    assert set(got[1:]) == {old[0], new[0]}


def test_claim_skips_future_retries_disabled_jobs_and_promotes_due_delayed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        off = make_job(conn, "http://x/", enabled=False)
        make_runs(conn, job, 1, next_retry_at="2999-01-01T00:00:00Z")
        make_runs(conn, off, 1)
        due = make_runs(conn, job, 1, status="delayed", scheduled_at="2000-01-01T00:00:00Z")
        make_runs(conn, job, 1, status="delayed", scheduled_at="2999-01-01T00:00:00Z")
        q = Queue(conn, worker_id="w", lease_secs=30)
        first = q.claim(10)
        assert first.runs == [] and first.promoted
        second = q.claim(10)
        assert [r.id for r in second.runs] == due
        events = conn.execute("SELECT message FROM run_events WHERE run_id = %s ORDER BY id", (due[0],))
        assert [e[0] for e in events] == ["delayed -> queued", "queued -> executing"]


def test_plain_claims_leave_gated_and_held_back_runs_to_the_full_claim(dsn: str) -> None:
    """claim_runs_plain takes only runs nothing holds back; whatever it leaves, and a gate with held
    runs and a slot free again, sends the next claim to claim_runs, which decides them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        free = make_job(conn, "http://x/")
        capped = make_job(conn, "http://x/", max_concurrency=1)
        keyed = make_job(conn, "http://x/", max_concurrency_per_key=1)
        worker = make_job(conn, "http://x/", execution_mode="worker")
        claims = Queue(conn, worker_id="w", lease_secs=30)
        assert claims.gated, "the first claim is the full one"
        assert claims.claim(100).runs == [] and not claims.gated, "an empty queue: plain claims next"

        plain = make_runs(conn, free, 3)
        # a keyed job's run without a key is not limited by it: plain
        plain += make_runs(conn, keyed, 1)
        limited = make_runs(conn, capped, 3) + make_runs(conn, keyed, 2, concurrency_key="k")
        aside = make_runs(conn, worker, 2)
        first = claims.claim(100)
        assert sorted(r.id for r in first.runs) == sorted(plain)
        assert first.promoted and claims.gated, "what it left goes to claim_runs, at once"
        held = conn.execute("SELECT count(*) FROM job_runs WHERE held IS NOT NULL").fetchone()
        assert held == (0,), "the plain claim holds nothing back"

        second = claims.claim(100)  # makes the gates: its runs wait for the next claim
        assert second.runs == [] and second.promoted and claims.gated
        third = claims.claim(100)
        taken = {r.id for r in third.runs}
        assert len(taken & set(limited[:3])) == 1 and len(taken & set(limited[3:])) == 1 and len(taken) == 2
        rows = dict(conn.execute("SELECT id::text, held FROM job_runs WHERE status = 'queued'").fetchall())
        assert {rows[r] for r in aside} == {"job"} and sorted(rows.values()).count("g:") == 2
        assert claims.gated, "its pool had gated runs: the full claim again"
        fourth = claims.claim(100)
        assert fourth.runs == [] and not fourth.promoted and not claims.gated

        # the capped job's run ends: its gate has a slot and held runs, which only claim_runs releases
        done = next(r for r in third.runs if r.id in limited[:3])

        async def finish() -> None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
                assert await queue.record_outcomes(aconn, [_outcome(done.id, 1, done.lease_id, "completed")])

        asyncio.run(finish())
        plain_again = claims.claim(100)
        assert plain_again.runs == [] and plain_again.promoted and claims.gated
        released = claims.claim(100)
        assert len(released.runs) == 1 and released.runs[0].id in limited[:3]
        # a run that comes queued for a job paused since its last claim: left, then held as 'job'
        conn.execute("UPDATE jobs SET paused = true WHERE id = %s", (free,))
        assert claims.claim(100).runs == [] and not claims.gated
        late = make_runs(conn, free, 1)
        assert claims.claim(100).runs == [] and claims.gated
        assert claims.claim(100).runs == []
        assert conn.execute("SELECT held FROM job_runs WHERE id = %s", (late[0],)).fetchone() == ("job",)

        # a delayed run or a retry come due: the plain claim does not promote it, claim_runs does
        soon = make_job(conn, "http://x/")
        assert claims.claim(100).runs == [] and not claims.gated
        for come_due in (
            {"status": "delayed", "scheduled_at": "2000-01-01T00:00:00Z"},
            {"held": "retry", "next_retry_at": "2000-01-01T00:00:00Z"},
        ):
            due = make_runs(conn, soon, 1, **come_due)
            noticed = claims.claim(100)
            assert noticed.runs == [] and noticed.promoted and claims.gated
            promoting = claims.claim(100)  # what it promotes, its own snapshot does not see
            assert promoting.runs == [] and promoting.promoted and not claims.gated
            assert [r.id for r in claims.claim(100).runs] == due


def _outcome(run_id: str, attempt: int, lease: str, status: str, **kw: object) -> Outcome:
    base = {"result": None, "error": None, "error_class": None, "retry_delay": 0.0, "priority_boost": 0}
    base.update(kw)
    return Outcome(run_id, attempt, lease, status, **base)  # type: ignore[arg-type]


def test_outcomes_are_fenced_on_lease_and_attempt(dsn: str) -> None:
    async def go() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            job = make_job(conn, "http://x/")
            make_runs(conn, job, 3)
            runs = Queue(conn, worker_id="w", lease_secs=30).claim(3).runs
        a, b, c = runs
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            written = await queue.record_outcomes(
                aconn,
                [
                    _outcome(a.id, 1, a.lease_id, "completed", result='{"ok": true}'),
                    _outcome(b.id, 1, str(uuid.uuid4()), "completed"),  # a stale lease: dropped
                    _outcome(
                        c.id,
                        1,
                        c.lease_id,
                        "queued",
                        error="endpoint returned 503",
                        error_class="server",
                        retry_delay=30.0,
                        priority_boost=1,
                    ),
                ],
            )
            assert written == {a.id, c.id}
            again = await queue.record_outcomes(aconn, [_outcome(a.id, 1, a.lease_id, "dead_letter")])
            assert again == set(), "a second outcome for the same attempt must be dropped"
        with psycopg.connect(dsn) as conn:
            rows = {
                str(r[0]): r[1:]
                for r in conn.execute(
                    "SELECT id, status, attempt, priority, result, next_retry_at > now() FROM job_runs"
                )
            }
            assert rows[a.id][:2] == ("completed", 1) and rows[a.id][3] == {"ok": True}
            assert rows[b.id][:2] == ("executing", 1)
            assert rows[c.id][:3] == ("queued", 2, 1) and rows[c.id][4] is True
            n = conn.execute("SELECT count(*) FROM run_events WHERE message LIKE 'executing -> %%'").fetchone()
            assert n == (2,), "an event only for the outcomes that were written"

    asyncio.run(go())


def test_reaper_requeues_lost_leases_and_crashes_exhausted_ones(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", max_attempts=2)
        make_runs(conn, job, 1)
        make_runs(conn, job, 1, attempt=2)
        runs = Queue(conn, worker_id="w", lease_secs=0.01).claim(2).runs
        conn.execute("SELECT pg_sleep(0.05)")
        assert queue.reap_lost_leases(conn) == {"queued": 1, "crashed": 1}
        by_id = {str(r[0]): r[1:] for r in conn.execute("SELECT id, status, attempt, lease_id FROM job_runs")}
        first = next(r for r in runs if r.attempt == 1)
        assert by_id[first.id] == ("queued", 2, None)
        second = next(r for r in runs if r.attempt == 2)
        assert by_id[second.id][:2] == ("crashed", 2)

    async def late_result() -> set[str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            return await queue.record_outcomes(aconn, [_outcome(first.id, 1, first.lease_id, "completed")])

    assert asyncio.run(late_result()) == set(), "the lost attempt's late result must be fenced out"


def test_expiry_only_for_runs_never_started(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        fresh = make_runs(conn, job, 1, expires_at="2000-01-01T00:00:00Z")
        make_runs(conn, job, 1, attempt=2, expires_at="2000-01-01T00:00:00Z")
        make_runs(conn, job, 1, expires_at="2999-01-01T00:00:00Z")
        assert queue.expire_runs(conn) == 1
        row = conn.execute("SELECT status, error FROM job_runs WHERE id = %s", (fresh[0],)).fetchone()
        assert row == ("expired", "run expired")


def test_the_expiry_sweep_reads_only_runs_that_can_expire(dsn: str) -> None:
    """The Reaper's expiry sweep runs every REAPER_INTERVAL_SECS. It read every queued run (claim
    index, held index, a heap fetch each) to find the few past their TTL: 540 ms a sweep behind
    2,000,000 queued runs. It reads job_runs_expiry, where only runs that can expire are."""
    past, future = "2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z"
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        _many_runs(conn, job, 5000, held="CASE WHEN g %% 2 = 0 THEN 'job' END")
        due = make_runs(conn, job, 1, expires_at=past) + make_runs(conn, job, 1, expires_at=past, held="job")
        make_runs(conn, job, 1, attempt=2, expires_at=past)  # retried: keeps going
        make_runs(conn, job, 1, resume_event_key="k", expires_at=past)  # resumed from a wait
        make_runs(conn, job, 1, expires_at=future)
        conn.execute("ANALYZE job_runs")
    with queue.connect(dsn) as conn:
        before = _tuples_read(conn, "job_runs")
        assert queue.expire_runs(conn) == 2
        read = _tuples_read(conn, "job_runs") - before
        assert read <= 10, read  # the two due runs (found, then updated), not the 5,000 queued
        expired = conn.execute("SELECT id::text FROM job_runs WHERE status = 'expired'").fetchall()
        assert sorted(r[0] for r in expired) == sorted(due)


def _tuples_read(conn: psycopg.Connection, table: str) -> int:
    """Rows of `table` read so far by sequential scans and index fetches, from its statistics (this
    connection's counts flushed first)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    with psycopg.connect(conn.info.dsn, autocommit=True) as look:
        row = look.execute(
            "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_our_functions_that_read_a_table_are_plpgsql(dsn: str) -> None:
    """PostgreSQL inlines a SQL function only when its body is one expression without a sub-SELECT;
    any other is planned again by every statement that calls it and set up again for each row it is
    called on (strait_quota_counted's EXISTS was a fifth of PostgreSQL's time in a trigger INSERT of
    one run). Ours that read a table are PL/pgSQL, which keeps its plans for the session (migration
    0018); the SQL ones left are single expressions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.proname, l.lanname, p.prosrc FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
            "WHERE p.proname LIKE 'strait%%'"
        ).fetchall()
    by_language: dict[str, set[str]] = {}
    for name, language, body in rows:
        by_language.setdefault(language, set()).add(name)
        if language == "sql":
            words = re.findall(r"\b(SELECT|FROM)\b", body, re.I)
            assert [w.upper() for w in words] == ["SELECT"], (name, body)
    assert {"strait_entry_status", "strait_run_dependency_key"} <= by_language["sql"]
    assert {"strait_quota_counted", "strait_count_active", "strait_dependency_met"} <= by_language["plpgsql"]


def test_every_named_statement_is_converted_once() -> None:
    """psycopg parses a statement's named parameters into `$n` and caches that only for texts up to
    its limit (4096 bytes by default); store/sql.py raises the limit past our longest statement, so
    the claim, the outcome write and the others are parsed once, not on every execution. Checked
    through psycopg's private cache: a psycopg that changes it fails here, not silently."""
    from psycopg._queries import PostgresQuery, _query2pg
    from psycopg.adapt import Transformer

    from strait_actors.store.sql import queries

    texts = queries()
    assert max(len(t.encode()) for t in texts.values()) > 4096  # the claim is 16 KB
    for name, text in texts.items():
        params = {k: None for k in re.findall(r"%\((\w+)\)[sbt]", text)}
        if not params:
            continue  # psycopg converts nothing without parameters
        PostgresQuery(Transformer()).convert(text, params)
        hits = _query2pg.cache_info().hits
        PostgresQuery(Transformer()).convert(text, params)
        assert _query2pg.cache_info().hits == hits + 1, name


def test_a_derived_statement_is_its_base_with_its_sections_replaced() -> None:
    full, plain = q("claim_runs"), q("claim_runs_plain")
    # outside the two sections, the same text; inside, no gate written, no run held, none promoted
    outside = re.compile(r"[ \t]*-- \{(promotion|gates)\b.*?-- \1\}", re.S)
    assert outside.sub("", full) == outside.sub("", plain) and len(outside.findall(plain)) == 2
    inside = "".join(m.group(0) for m in outside.finditer(plain))
    assert "run_gates (" not in inside and "UPDATE job_runs" not in inside and "FOR UPDATE" not in inside
    assert "strait_lock_gates" in full and "strait_lock_gates" not in plain
    assert [t.name for t in transitions.declared(plain)] == ["claimed"]
    with pytest.raises(ValueError, match="no marked section"):
        derive("SELECT 1", "x")
    with pytest.raises(ValueError, match="which is not defined"):
        parse("-- name: claim_runs_plain\n-- {gates\nx\n-- gates}\n")
    with pytest.raises(ValueError, match="marked 0 times"):
        derive("SELECT 1", "-- {gates\nx\n-- gates}")
    twice = "-- {gates\nA\n-- gates}\n-- {gates\nB\n-- gates}\n"
    with pytest.raises(ValueError, match="marked 2 times"):
        derive(twice, "-- {gates\nx\n-- gates}")
    base = "a\n  -- {one: why\nb\n  -- one}\nc\n-- {two\nd\n-- two}\ne"
    derived = derive(base, "dropped\n-- {two\nD\n-- two}\n-- {one\nB\n-- one}")
    assert derived == "a\n-- {one\nB\n-- one}\nc\n-- {two\nD\n-- two}\ne"


def test_a_kept_cursor_keeps_its_adapters_between_executions(dsn: str) -> None:
    """store.sql.kept_cursor: one cursor per connection and statement, used again (and made anew
    once closed), on which psycopg keeps the parameters' dumpers and the columns' loaders from one
    execution of the statement to the next (its Transformer: private to psycopg, checked here)."""
    from psycopg.rows import tuple_row

    from strait_actors.store.sql import kept_cursor

    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as other:
        text, again = "SELECT %(a)s::int[] AS a", "SELECT %(b)s::text AS b"
        cur = kept_cursor(conn, text, tuple_row)
        assert kept_cursor(conn, text, tuple_row) is cur
        assert kept_cursor(conn, again, tuple_row) is not cur
        assert kept_cursor(other, text, tuple_row) is not cur
        assert cur.execute(text, {"a": [1, 2]}).fetchall() == [([1, 2],)]
        adapters = cur._tx
        assert cur.execute(text, {"a": [3]}).fetchall() == [([3],)]
        assert cur._tx is adapters
        cur.close()
        assert kept_cursor(conn, text, tuple_row) is not cur


def _many_runs(conn: psycopg.Connection, job: str, n: int, **columns: str) -> None:
    """`n` runs of `job` in one INSERT ... SELECT over generate_series(1, n) g: each column given as
    SQL that may use g (a % written %%), status 'queued' unless given."""
    columns = {"status": "'queued'", **columns}
    conn.execute(
        f"INSERT INTO job_runs (id, job_id, project_id, payload_hash, {', '.join(columns)}) "
        f"SELECT gen_random_uuid(), %s, 'p', 'h', {', '.join(columns.values())} FROM generate_series(1, %s) g",
        (job, n),
    )


def _claim_all(dsn: str, claimers: int, batch: int) -> list[str]:
    """Claimers racing until the queue gives them nothing more; every run id claimed. A claimer's
    error (a deadlock, say) is raised here."""
    claimed: list[list[str]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(claimers)

    def claimer(i: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                q = Queue(conn, worker_id=f"w{i}", lease_secs=30)
                barrier.wait()
                while True:
                    got = q.claim(batch)
                    claimed[i].extend(r.id for r in got.runs)
                    if not got.runs and not got.promoted:
                        return
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return [r for c in claimed for r in c]


def test_racing_claimers_never_take_more_than_the_limits(dsn: str) -> None:
    """Four claimers in batches of 37 over 600 runs: a job limit of 10 is never overshot, inside a
    batch or across claimers, nor a per-key limit of 2; the runs left over are held out of the claim
    index with their gates counting them. Outcomes give slots back and the next claims take the oldest."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        capped = make_job(conn, "http://x/", max_concurrency=10)
        keyed = make_job(conn, "http://x/", max_concurrency_per_key=2)
        free = make_job(conn, "http://x/")
        make_runs(conn, capped, 200)
        for k in range(5):
            make_runs(conn, keyed, 40, concurrency_key=f"k{k}")
        make_runs(conn, free, 200)
    first = _claim_all(dsn, 4, 37)
    with psycopg.connect(dsn, autocommit=True) as conn:
        by_job = dict(conn.execute("SELECT job_id::text, count(*) FROM job_runs WHERE status = 'executing' GROUP BY 1"))
        assert by_job == {capped: 10, keyed: 10, free: 200}
        per_key = conn.execute(
            "SELECT concurrency_key, count(*) FROM job_runs WHERE status = 'executing' AND job_id = %s GROUP BY 1",
            (keyed,),
        ).fetchall()
        assert sorted(per_key) == [(f"k{k}", 2) for k in range(5)]
        assert len(first) == len(set(first)) == 220
        gates = conn.execute("SELECT ckey, cap, active, held FROM run_gates ORDER BY job_id, ckey").fetchall()
        assert sorted(gates) == sorted([("", 10, 10, 190)] + [(f"k{k}", 2, 2, 38) for k in range(5)])
        held = conn.execute("SELECT count(*) FROM job_runs WHERE status = 'queued' AND held LIKE 'g:%%'").fetchone()
        assert held == (380,)
        # the capped job's oldest 4 runs end: 4 slots, taken by its 4 oldest held runs
        done = conn.execute(
            "SELECT id::text, attempt, lease_id::text FROM job_runs WHERE job_id = %s AND status = 'executing' "
            "ORDER BY created_at LIMIT 4",
            (capped,),
        ).fetchall()

    async def record() -> set[str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            outcomes = [Outcome(r, a, lease, "completed", None, None, None, 0.0, 0) for r, a, lease in done]
            return await queue.record_outcomes(aconn, outcomes)

    assert len(asyncio.run(record())) == 4
    second = _claim_all(dsn, 4, 37)
    assert len(second) == 4
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT active, held FROM run_gates WHERE job_id = %s", (capped,)).fetchone() == (10, 186)
        newest_taken, oldest_left = conn.execute(
            "SELECT max(created_at) FILTER (WHERE id = ANY(%s::uuid[])), "
            "min(created_at) FILTER (WHERE status = 'queued') FROM job_runs WHERE job_id = %s",
            (second, capped),
        ).fetchone()
        assert newest_taken <= oldest_left  # oldest first


def _claim_plan(dsn: str, options: str, name: str = "claim_runs") -> list[str]:
    """EXPLAIN (options) of a claim of 100 on a claim connection (run only with ANALYZE): its plan's
    lines."""
    claims = queue.connect(dsn, claims=True)
    try:
        params = {"limit": 100, "lease_id": uuid.uuid4(), "lease_secs": 20, "worker_id": "w"}
        return [r[0] for r in claims.execute(f"EXPLAIN ({options}) " + q(name), params).fetchall()]
    finally:
        claims.close()


def _numbered(statement: str) -> tuple[str, list[str]]:
    """The statement with its named parameters as PostgreSQL's $1, $2 ... (for PREPARE or EXPLAIN
    (GENERIC_PLAN)), and their names in that order."""
    names: list[str] = []
    text = re.sub(
        r"%\((\w+)\)s",
        lambda m: f"${(names.append(m[1]) if m[1] not in names else None) or names.index(m[1]) + 1}",
        statement,
    ).replace("%%", "%")
    return text, names


def test_the_plain_claim_reads_a_few_pages_however_many_runs_wait(dsn: str) -> None:
    """claim_runs_plain runs while nothing is held back, but runs set aside (held) or delayed may be
    waiting by the million: what it looks at (a run come due, a gate to release, the next claimable
    runs) is the first entry of an index each. Its first draft looked for a due retry with an EXISTS
    that a plan made on a young table answered by walking every held run (job_runs_held); the Poller
    keeps its plan until the statistics change. Planned here on an empty table, run behind 90,000
    waiting runs."""
    with psycopg.connect(dsn, autocommit=True) as conn, queue.connect(dsn, claims=True) as claims:
        job = make_job(conn, "http://127.0.0.1:9/x")
        aside = make_job(conn, "http://127.0.0.1:9/x", execution_mode="worker")
        generic, names = _numbered(q("claim_runs_plain"))
        claims.execute("PREPARE plain AS " + generic)
        values = {"limit": 100, "lease_id": str(uuid.uuid4()), "lease_secs": 20, "worker_id": "w"}
        run = "EXECUTE plain(" + ", ".join(f"'{values[n]}'" for n in names) + ")"
        claims.execute(run)  # planned (a generic plan: CLAIM_OPTIONS) on the empty table
        _many_runs(conn, aside, 30000, held="'job'")
        _many_runs(conn, job, 30000, status="'delayed'", scheduled_at="now() + interval '1 day'")
        _many_runs(conn, job, 30000, held="'retry'", next_retry_at="now() + interval '1 day'")
        _many_runs(conn, job, 10)
        plan = [r[0] for r in claims.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " + run)]
        text = "\n".join(plan)
        assert "job_runs_held" not in text and "Seq Scan" not in text, text
        # the whole statement, its 10 runs claimed (each written, with its event) included
        assert "Buffers" in plan[1] and int(re.findall(r"shared hit=(\d+)", plan[1])[0]) < 400, text
        assert conn.execute("SELECT count(*) FROM job_runs WHERE status = 'executing'").fetchone() == (10,)


def test_the_claims_plan_is_sized_by_its_batch_not_by_the_table(dsn: str) -> None:
    """The Poller runs the claim as one generic plan (queue.CLAIM_OPTIONS), whose row estimates follow
    job_runs' statistics: behind runs the claim may not take (a worker-mode job's) and a history of
    finished ones they reached millions of rows, and every claim sized its hash tables and sorts for
    them (2.1 ms to claim one run behind 1,000,000 such runs instead of 0.9; bench_e2e --scenario
    backlog). From the pool of runs a claim considers on, no step expects more than a few batches."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://127.0.0.1:9/x")
        _many_runs(
            conn,
            job,
            100000,
            status="CASE WHEN g %% 2 = 0 THEN 'queued' ELSE 'completed' END",
            held="CASE WHEN g %% 2 = 0 THEN 'job' END",
        )
        conn.execute("ANALYZE job_runs")
    generic, _ = _numbered(q("claim_runs"))
    with queue.connect(dsn, claims=True) as conn:
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (GENERIC_PLAN) " + generic).fetchall())
    # what each step of the plan expects to produce (the first node under its CTE's name, the main
    # query's top): the steps that look for candidates in job_runs go by its statistics, the rest by
    # the pool, bounded by `LIMIT 1000`
    part, sized = "main", {"main": int(re.findall(r"rows=(\d+)", plan)[0])}
    for line in plan.splitlines()[1:]:
        if head := re.match(r"  CTE (\w+)", line):
            part = head[1]
        elif (rows := re.search(r"rows=(\d+)", line)) and part not in sized:
            sized[part] = int(rows[1])
    for skip in ("due", "promoted", "due_retries", "retried", "released", "fresh"):
        del sized[skip]
    assert "claimed" in sized and max(sized.values()) <= 5000, (sized, plan)


def test_a_claim_takes_up_to_its_bound_whole_and_never_more(dsn: str) -> None:
    """The claim's `LIMIT 1000` (the bound of its plan's estimates) never cuts a batch: a claim of the
    largest batch takes it whole, and a caller asking for more gets that bound."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        make_runs(conn, job, queue.CLAIM_MAX + 100)
        claims = Queue(conn, worker_id="w", lease_secs=30)
        assert len(claims.claim(queue.CLAIM_MAX + 500).runs) == queue.CLAIM_MAX
        assert len(claims.claim(queue.CLAIM_MAX).runs) == 100
        assert statuses(conn) == {"executing": queue.CLAIM_MAX + 100}


def test_claimers_making_the_same_new_gates_never_deadlock(dsn: str) -> None:
    """A claim makes the gates its runs need in key order, so two claims making the same gates wait
    on each other's inserts in one order, never in a cycle. Unordered (in the order of a hash table,
    which differs with its contents), racing claimers deadlocked on run_gates' key index about once
    in twenty runs of the test above. The plan is checked (that is what fails without the order),
    then rounds of four claimers over 60 new keys take every run once, each key within its limit."""
    plan = "\n".join(_claim_plan(dsn, "COSTS OFF, VERBOSE"))
    new_gates = plan[plan.index("CTE new_gates") :]
    new_gates = new_gates[: new_gates.index("\n  CTE ")]
    assert "Insert on public.run_gates" in new_gates
    assert re.search(r"Sort Key: \w+\.job_id, \w+\.ckey\n", new_gates), new_gates
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(5):
            job = make_job(conn, "http://x/", max_concurrency_per_key=1)
            for _ in range(2):  # round robin: every batch of a claim spans many keys
                for k in range(60):
                    make_runs(conn, job, 1, concurrency_key=f"k{k:02}")
            got = _claim_all(dsn, 4, 37)
            assert len(got) == len(set(got)) == 60
            per_key = conn.execute(
                "SELECT count(*) FROM job_runs WHERE job_id = %s AND status = 'executing' GROUP BY concurrency_key",
                (job,),
            ).fetchall()
            assert per_key == [(1,)] * 60


def test_a_retry_in_backoff_waits_out_of_the_claim_index(dsn: str) -> None:
    """A retry with a delay is held as 'retry' (claims do not walk past it) until it is due; then a
    claim notices or brings it back, says so (`promoted`), and the claims that follow take it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", max_attempts=3)
        (run,) = make_runs(conn, job, 1)
        q = Queue(conn, worker_id="w", lease_secs=30)
        (claimed,) = q.claim(5).runs

        async def fail() -> set[str]:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
                o = Outcome(run, 1, claimed.lease_id, "queued", None, "boom", "transient", 0.6, 0)
                return await queue.record_outcomes(aconn, [o])

        assert asyncio.run(fail()) == {run}
        assert conn.execute("SELECT status, held FROM job_runs WHERE id = %s", (run,)).fetchone() == ("queued", "retry")
        first = q.claim(5)
        assert first.runs == [] and not first.promoted

        def brought_back() -> bool:  # due after 0.6 s: a claim brings it back to the claim index
            got = q.claim(5)
            assert got.runs == []
            return got.promoted

        wait_for(brought_back, 10, what="the due retry noticed")
        # it was noticed (by claim_runs_plain, which promotes nothing) or brought back: the claims
        # that follow at once, as the Poller's do, bring it back and take it
        for _ in range(2):
            got = q.claim(5)
            if got.runs:
                break
            assert got.promoted
        (again,) = got.runs
        assert (again.id, again.attempt) == (run, 2)


def test_priority_ageing_lifts_old_claimable_runs_one_step_up_to_10(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        old = "2000-01-01T00:00:00Z"
        (low,) = make_runs(conn, job, 1, priority=0, created_at=old)
        (nine,) = make_runs(conn, job, 1, priority=9, created_at=old)
        (top,) = make_runs(conn, job, 1, priority=10, created_at=old)
        (young,) = make_runs(conn, job, 1, priority=0)
        (held,) = make_runs(conn, job, 1, priority=0, created_at=old, held="retry", next_retry_at="2999-01-01")
        assert queue.age_queued_runs(conn, 300) == 2  # low 0 -> 1, nine 9 -> 10; top is at the cap
        assert queue.age_queued_runs(conn, 300) == 1  # low 1 -> 2; young and held are never aged
        rows = dict(conn.execute("SELECT id::text, priority FROM job_runs").fetchall())
        assert rows == {low: 2, nine: 10, top: 10, young: 0, held: 0}


def _gate_rows_read(conn: psycopg.Connection, sql: str, params: dict[str, object]) -> tuple[int, int]:
    """(rows the statement read from run_gates, including inside the gate functions; rows it
    returned), from the table's own statistics around it."""

    def read() -> int:
        with psycopg.connect(conn.info.dsn, autocommit=True) as look:
            look.execute("SELECT pg_stat_clear_snapshot()")
            row = look.execute(
                "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables "
                "WHERE relname = 'run_gates'"
            ).fetchone()
            assert row is not None
            return int(row[0])

    conn.execute("SELECT pg_stat_force_next_flush()")
    before = read()
    rows = conn.execute(sql, params).fetchall()
    conn.execute("SELECT pg_stat_force_next_flush()")
    return read() - before, len(rows)


def test_claims_and_outcomes_read_only_the_gates_they_need(dsn: str) -> None:
    """A claim and an outcome write probe the gates of their own runs, never every gate of the table:
    with 2,000 per-key gates (sorts are priced out on worker connections, and an ORDER BY over the
    gates themselves once walked all of them: 24 ms a claim at 1,000 keys)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", max_concurrency_per_key=1)
        conn.execute(
            "INSERT INTO run_gates (job_id, ckey, cap) SELECT %s, 'k' || g, 1 FROM generate_series(0, 1999) g", (job,)
        )
        for k in range(50):
            make_runs(conn, job, 1, concurrency_key=f"k{k}")
        conn.execute("ANALYZE run_gates")
    with queue.connect(dsn, claims=True) as conn:
        params = {"limit": 100, "lease_id": uuid.uuid4(), "lease_secs": 30, "worker_id": "w"}
        read, _ = _gate_rows_read(conn, q("claim_runs"), params)
        assert read <= 200, read  # each of the 50 runs' gates read up to thrice (lock, re-lock, move), not 2,000
        claimed = conn.execute(
            "SELECT id, attempt, lease_id FROM job_runs WHERE job_id = %s AND status = 'executing'", (job,)
        ).fetchall()
        assert len(claimed) == 50
        n = len(claimed)
        outcome = {
            "ids": [c[0] for c in claimed],
            "attempts": [c[1] for c in claimed],
            "leases": [c[2] for c in claimed],
            "statuses": ["completed"] * n,
            "results": [None] * n,
            "errors": [None] * n,
            "classes": [None] * n,
            "delays": [0.0] * n,
            "boosts": [0] * n,
        }
    with queue.connect(dsn) as conn:
        read, moved = _gate_rows_read(conn, q("record_outcomes"), outcome)
        assert moved == 50
        assert read <= 150, read
        assert conn.execute("SELECT sum(active) FROM run_gates WHERE job_id = %s", (job,)).fetchone()[0] == 0


def test_the_claim_probes_the_runs_it_takes_however_big_the_table(dsn: str) -> None:
    """The claim's estimates of its own CTEs are far off (hundreds of millions of rows), so on a table
    of some size the planner liked hashing all of job_runs to update the few runs claimed: 23 s a
    claim behind a backlog of 2,000,000 runs (bench_e2e --scenario backlog). Its UPDATEs join
    job_runs by a condition only an index probe can take: every read of job_runs by its primary key
    has an index condition."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://127.0.0.1:9/x")
        _many_runs(
            conn,
            job,
            50000,
            status="CASE WHEN g %% 2 = 0 THEN 'queued' ELSE 'delayed' END",
            scheduled_at="now() + interval '1 day'",
        )
        conn.execute("ANALYZE job_runs")
    plan = _claim_plan(dsn, "COSTS OFF")
    for i, line in enumerate(plan):
        if "Index Scan using job_runs_pkey" in line:
            assert "Index Cond" in plan[i + 1], "\n".join(plan[i - 3 : i + 3])


def test_a_trigger_batch_with_and_without_idempotency_keys(dsn: str) -> None:
    """insert_runs: a batch in which no run has a key goes without ON CONFLICT (insert_runs_unkeyed)
    and queues every run; a batch that mixes keyless runs with one whose key is taken queues the
    keyless ones and skips that one only; its key's holder stays as it was."""
    from strait_actors.model import NewRun
    from strait_actors.store.runs import insert_runs

    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")

    def run(key: str | None = None) -> NewRun:
        return NewRun(uuid.uuid4(), uuid.UUID(job), "p", "queued", 0, '{"i":1}', "h", {}, {}, "api",
                      None, None, key, None, None, 1, None, None)  # fmt: skip

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            keyless = [run(), run(), run()]
            assert await insert_runs(aconn, keyless) == {r.id: "queued" for r in keyless}
            holder = run("k1")
            assert await insert_runs(aconn, [holder]) == {holder.id: "queued"}
            mixed = [run(), run("k1"), run()]
            assert await insert_runs(aconn, mixed) == {mixed[0].id: "queued", mixed[2].id: "queued"}

    asyncio.run(go())
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT idempotency_key, count(*) FROM job_runs WHERE job_id = %s GROUP BY 1", (job,))
        assert sorted(rows.fetchall(), key=str) == sorted([(None, 5), ("k1", 1)], key=str)
    assert "ON CONFLICT" not in q("insert_runs_unkeyed") and "ON CONFLICT" in q("insert_runs")
