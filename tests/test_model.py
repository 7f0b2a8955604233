"""The domain model: a run as new_run decides it, from a job row as the database holds it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from strait_actors import fsm
from strait_actors.model import RunOrigin, RunRequest, new_run
from tests.helpers import make_job


def test_the_job_ttl_rule_has_one_copy_in_the_schema(dsn: str) -> None:
    """run_ttl_secs when set (0: no TTL), else timeout + 60: the same for trigger, replay and DLQ replay."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        jobs = {
            ttl: make_job(conn, "http://x/", timeout_secs=30, run_ttl_secs=ttl)  # type: ignore[arg-type]
            for ttl in (None, 0, 45)
        }
        got = {
            ttl: conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone() for ttl, job_id in jobs.items()
        }
    assert {ttl: row["effective_run_ttl_secs"] for ttl, row in got.items()} == {None: 90, 0: None, 45: 45}
    now = datetime.now(UTC)
    run = new_run(RunOrigin(got[45], "me", now), RunRequest(), "{}", "h", None)
    assert (run.status, run.ttl_secs, run.created_by, run.triggered_by) == (fsm.S.QUEUED, 45.0, "me", "manual")
    asked = new_run(RunOrigin(got[0], None, now), RunRequest(ttl_secs=7), "{}", "h", "k")
    assert (asked.ttl_secs, asked.idempotency_key) == (7.0, "k")
    assert new_run(RunOrigin(got[0], None, now), RunRequest(), "{}", "h", None).ttl_secs is None, "0: no TTL"
    assert new_run(RunOrigin(got[45], None, now), RunRequest(ttl_secs=0), "{}", "h", None).ttl_secs is None


def test_new_run_is_delayed_only_when_scheduled_ahead_and_merges_tags_and_metadata(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        job_id = make_job(conn, "http://x/", tags='{"team": "a", "env": "prod"}', default_run_metadata='{"src": "job"}')
        job = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    now = datetime.now(UTC)
    origin = RunOrigin(job, None, now, trace={"traceparent": "t"})
    later = new_run(origin, RunRequest(scheduled_at=now + timedelta(hours=1), tags={"env": "dev"}), "{}", "h", None)
    assert later.status == fsm.S.DELAYED and later.scheduled_at == now + timedelta(hours=1)
    assert later.tags == {"team": "a", "env": "dev"}
    assert later.metadata == {"src": "job", "traceparent": "t"}
    past = new_run(origin, RunRequest(scheduled_at=now - timedelta(seconds=1)), "{}", "h", None)
    assert past.status == fsm.S.QUEUED and past.scheduled_at is None
    for run in (later, past):
        assert run.status in fsm.INITIAL
