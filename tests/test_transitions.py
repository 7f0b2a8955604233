"""The transition seam: every status write is declared, legal in fsm.TRANSITIONS, guarded, and
carries its consequences (the state_change event), and the seam refuses anything else."""

from __future__ import annotations

import asyncio
import re
import uuid
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from strait_actors import fsm
from strait_actors.model import Outcome
from strait_actors.store import queue, sql, transitions
from strait_actors.store import runs as runs_store
from strait_actors.store.queue import Queue
from strait_actors.store.transitions import TransitionError
from tests.helpers import finish_params, make_job, make_runs

PACKAGE = Path(str(resources.files("strait_actors")))
_UPDATE = re.compile(r"(?:(\w+) AS \(\s*)?UPDATE job_runs\b(.*?)(?=\bFROM\b|\bWHERE\b|\bRETURNING\b|$)", re.S)


def raw_statements() -> dict[str, str]:
    return sql.parse((PACKAGE / "store" / "queries.sql").read_text())


def status_writes(statements: dict[str, str]) -> list[tuple[str, str | None]]:
    """(statement, CTE name) of every UPDATE of job_runs whose SET assigns `status`."""
    found = []
    for name, text in statements.items():
        for m in _UPDATE.finditer(text):
            if re.search(r"\bSET\b.*\bstatus\s*=", m.group(2), re.S):
                found.append((name, m.group(1)))
    return found


def bypasses(statements: dict[str, str]) -> list[str]:
    """Status writes that are not a declared, guarded transition with its consequences."""
    out = []
    for name, cte in status_writes(statements):
        text = statements[name]
        declared = {t.name for t in transitions.declared(text)}
        if cte is None or cte not in declared:
            out.append(f"{name}: status write outside a declared transition")
        elif f"{{guard {cte}}}" not in text or f"{{after {cte}}}" not in text:
            out.append(f"{name}: transition {cte} lacks its guard or its consequences")
    return out


def test_every_status_write_in_the_package_goes_through_the_seam() -> None:
    statements = raw_statements()
    writes = status_writes(statements)
    # the scanner finds the known writers (so an empty result cannot pass by accident)
    assert {n for n, _ in writes} >= {"claim_runs", "record_outcomes", "reap_lost_leases", "cancel_run", "dlq_replay"}
    assert bypasses(statements) == []
    # no SQL about runs anywhere else in the package: python modules cannot write a status
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "store" / "transitions.py":  # the seam itself
            continue
        text = path.read_text()
        assert not re.search(r"UPDATE\s+job_runs|INSERT\s+INTO\s+run_events", text, re.I), path


def test_a_new_statement_that_bypasses_the_seam_is_caught() -> None:
    statements = raw_statements() | {
        "sneaky": "UPDATE job_runs SET status = 'completed' WHERE id = %(id)s",
        "sneaky_cte": "WITH x AS (UPDATE job_runs r SET finished_at = now(), status = 'failed' RETURNING r.id)\n"
        "SELECT 1",
    }
    assert bypasses(statements) == [
        "sneaky: status write outside a declared transition",
        "sneaky_cte: status write outside a declared transition",
    ]


def test_declared_edges_are_legal_and_expanded_into_guards() -> None:
    seen = 0
    for name, text in raw_statements().items():
        expanded = sql.q(name)
        assert "{guard" not in expanded and "{after" not in expanded and "{unlease}" not in expanded
        for t in transitions.declared(text):
            seen += 1
            for f, to in t.edges():
                assert to in fsm.TRANSITIONS.get(f, frozenset()), (name, f, to)
            assert f"(r.status = ANY('{{{','.join(sorted(t.sources))}}}'::text[])) IS TRUE" in expanded
            assert f"{t.name}_events AS (" in expanded and "'state_change'" in expanded
    assert seen >= 8


def test_cancel_takes_every_legal_source_from_the_state_machine() -> None:
    (t,) = transitions.declared(raw_statements()["cancel_run"])
    assert set(t.sources) == set(fsm.sources(fsm.S.CANCELED))


def test_only_the_seam_writes_state_change_events_and_creations_start_in_an_initial_status() -> None:
    literal_creations = []
    for name, text in raw_statements().items():
        assert "state_change" not in text, name
        # the SDK's log and progress events are the one other writer (their type is never state_change)
        assert name == "sdk_events" or "INSERT INTO run_events" not in text, name
        status = r"INSERT INTO job_runs\b.*?SELECT\s+[^,]+,\s*[^,]+,\s*[^,]+,\s*('?)([\w.]+)\1"
        for m in re.finditer(status, text, re.S):
            if m.group(1):  # a literal status
                assert m.group(2) in fsm.INITIAL, name
            elif m.group(2).startswith("u."):  # the caller's (a NewRun's: test_model)
                continue
            else:  # or the dependency gate's choice (strait_entry_status, migration 0015)
                assert "strait_entry_status(" in text, name
            literal_creations.append(name)
    assert literal_creations == ["replay_run", "batch_trigger", "sdk_spawn", "sdk_continue", "cron_fire"]


GOOD = """-- transition moved: executing -> completed
WITH moved AS (
    UPDATE job_runs r SET status = 'completed', {unlease}
    FROM v WHERE r.id = v.id AND {guard moved}
    RETURNING r.id, 'executing'::text AS from_status, r.status AS to_status, r.attempt, r.parent_run_id,
              r.job_id, r.slots
){after moved}
SELECT id FROM moved"""


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (("executing -> completed", "completed -> queued"), "not in fsm.TRANSITIONS"),
        (("executing -> completed", "executing -> bogus"), "unknown status"),
        (("AND {guard moved}", ""), "has no {guard moved}"),
        (("{after moved}", ""), "has no {after moved}"),
        (("'completed', {unlease}", "'completed', finished_at = now()"), "must clear the lease"),
        (("SET status = 'completed'", "SET status = 'failed'"), "not its declared target"),
        (("r.status AS to_status, ", ""), "RETURNING lacks ['to_status']"),
        # an ending run answers its parent's spawn-await: the seam needs to know the parent
        ((", r.parent_run_id", ""), "RETURNING lacks ['parent_run_id']"),
        # a run leaving executing gives its concurrency slots back: the seam needs them
        ((", r.slots", ""), "RETURNING lacks ['slots']"),
        (("{after moved}", "{after moved}{wake moved}"), "never read"),
        (("SELECT id FROM moved", "SELECT id FROM moved{wake other}"), "names no declared transition"),
    ],
)
def test_the_seam_refuses_statements_off_the_state_machine(change: tuple[str, str], why: str) -> None:
    assert transitions.expand("good", GOOD)  # the unchanged statement is accepted
    with pytest.raises(TransitionError, match=re.escape(why)):
        transitions.expand("bad", GOOD.replace(*change))


def _outcome(run_id: str, attempt: int, lease: str, status: str, **kw: object) -> Outcome:
    base = {"result": None, "error": None, "error_class": None, "retry_delay": 0.0, "priority_boost": 0}
    base.update(kw)
    return Outcome(run_id, attempt, lease, status, **base)  # type: ignore[arg-type]


def _events(conn: psycopg.Connection, run_id: str) -> list[tuple[str, str, int]]:
    rows = conn.execute(
        "SELECT data FROM run_events WHERE run_id = %s AND type = 'state_change' ORDER BY id", (run_id,)
    )
    return [(d["from"], d["to"], d["attempt"]) for (d,) in rows]


def test_a_run_through_every_writer_gets_one_event_per_change_and_illegal_targets_are_dropped(dsn: str) -> None:
    async def record(outcomes: list[Outcome]) -> set[str]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            return await queue.record_outcomes(aconn, outcomes)

    async def api_side(run_id: str) -> tuple[object, object, object]:
        pool = sql.make_pool(dsn, 2)
        await pool.open()
        try:
            replayed = await runs_store.dlq_replay(pool, uuid.UUID(run_id), "ops")
            canceled = await runs_store.cancel_run(pool, uuid.UUID(run_id), "ops")
            again = await runs_store.cancel_run(pool, uuid.UUID(run_id), "ops")
            return replayed, canceled, again
        finally:
            await pool.close()

    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", max_attempts=2)
        (run,) = make_runs(conn, job, 1, status="delayed", scheduled_at="2000-01-01T00:00:00Z")
        q = Queue(conn, worker_id="w", lease_secs=30)
        assert q.claim(5).promoted
        (first,) = q.claim(5).runs
        # an outcome naming a target the dispatcher may not write (legal from executing or not) is dropped
        assert asyncio.run(record([_outcome(run, 1, first.lease_id, fsm.S.CANCELED)])) == set()
        assert asyncio.run(record([_outcome(run, 1, first.lease_id, fsm.S.EXECUTING)])) == set()
        assert asyncio.run(record([_outcome(run, 1, first.lease_id, fsm.S.QUEUED, error="boom")])) == {run}
        conn.execute("UPDATE job_runs SET next_retry_at = NULL WHERE id = %s", (run,))  # test: skip the backoff
        (second,) = q.claim(5).runs
        assert asyncio.run(record([_outcome(run, 2, second.lease_id, fsm.S.DEAD_LETTER, error="boom")])) == {run}
        replayed, canceled, again = asyncio.run(api_side(run))
        assert replayed is not None and canceled is not None and again is None
        assert _events(conn, run) == [
            ("delayed", "queued", 1),
            ("queued", "executing", 1),
            ("executing", "queued", 1),
            ("queued", "executing", 2),
            ("executing", "dead_letter", 2),
            ("dead_letter", "queued", 1),
            ("queued", "canceled", 1),
        ]
        levels = [r[0] for r in conn.execute("SELECT level FROM run_events WHERE run_id = %s ORDER BY id", (run,))]
        assert levels == ["info", "info", "warn", "info", "warn", "info", "info"]
        notes = conn.execute(
            "SELECT message, data->>'actor' FROM run_events WHERE run_id = %s ORDER BY id DESC LIMIT 2", (run,)
        ).fetchall()
        assert notes == [("queued -> canceled", "ops"), ("dead_letter -> queued (dlq replay)", "ops")]


def test_the_seam_finds_waits_by_run_or_id_never_by_walking_the_waiting_ones(dsn: str) -> None:
    """2,000 waiting triggers the planner has no statistics for (as on a young table): the plans of a
    finish (its runs' waits close, their parents' spawn-awaits answer) and of an event's resume
    read event_triggers by id or by run, never along the partial index of every waiting trigger."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")
        lease = str(uuid.uuid4())
        run_ids = make_runs(conn, job, 20, status="executing", attempt=1, lease_id=lease)
        conn.execute(
            "INSERT INTO event_triggers (id, event_key, project_id, source_type, status, timeout_secs, expires_at)"
            " SELECT gen_random_uuid(), 'k' || g, 'p', 'job_run', 'waiting', 86400, now() + interval '1 day'"
            " FROM generate_series(1, 2000) g"
        )
        finish = finish_params(run_ids, lease)
        send = {
            "projects": ["p"],
            "keys": ["k1"],
            "payloads": ["{}"],
            "sources": [None],
            "sent_bys": [None],
            "checkpoints": [True],
        }
        for name, params in (("sdk_finish", finish), ("send_events", send)):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql.q(name), params))
            assert "event_triggers_due" not in plan, f"{name} walks every waiting trigger:\n{plan}"


def test_a_transition_that_clears_held_counts_no_holds() -> None:
    """Its RETURNING reads every run as not held, so the seam's part for held runs would never find
    one: it is left out (the claim's own CTEs count the holds it ends)."""
    base = (
        "-- transition gone: queued -> canceled\n"
        "WITH gone AS (\n"
        "    UPDATE job_runs r SET status = 'canceled', finished_at = now(){held}\n"
        "    WHERE r.id = %(id)s AND {{guard gone}}\n"
        "    RETURNING r.id, 'queued'::text AS from_status, r.status AS to_status, r.attempt, r.job_id, r.held,\n"
        "              r.parent_run_id\n"
        "){{after gone}}\n"
        "SELECT 1"
    )
    kept = transitions.expand("x", base.format(held=""))
    cleared = transitions.expand("x", base.format(held=", held = NULL"))
    assert "gone_gates AS" in kept and "m.held LIKE 'g:%%'" in kept
    assert "gone_gates AS" not in cleared and "gone_events AS" in cleared and "gone_tally AS" in cleared
    # a held-only write elsewhere in the statement is not the transition's
    elsewhere = transitions.expand("x", base.format(held="") + " FROM (SELECT 1) x WHERE held = NULL")
    assert "gone_gates AS" in elsewhere
    claim = sql.q("claim_runs")
    assert "claimed_events AS" in claim and "claimed_gates AS" not in claim
