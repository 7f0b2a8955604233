"""A resumed job's held runs come back in bounded pieces (migration 0020): the resume frees the first
1000 in claim order in its own transaction and leaves the rest to the Reaper, which frees them in
batches, each its own transaction, until none is left."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from strait_actors.store import queue
from strait_actors.store.sql import q
from tests.client_helpers import make_job as make_api_job
from tests.conftest import Endpoint, Server, wait_for
from tests.helpers import make_job

# n runs held as 'job', each with its own priority (0..4) and age: the claim order is known
HELD = """
INSERT INTO job_runs (id, job_id, project_id, status, held, priority, payload, payload_hash, created_at)
SELECT gen_random_uuid(), %(job)s, 'p', 'queued', 'job', g %% 5, '{}', 'h', now() - g * interval '1 ms'
FROM generate_series(1, %(n)s) g
"""
CLAIM_ORDER = """
SELECT id::text FROM job_runs WHERE job_id = %s AND status = 'queued' ORDER BY priority DESC, created_at
"""


def _held(conn: psycopg.Connection, job: str) -> set[str]:
    rows = conn.execute("SELECT id::text FROM job_runs WHERE job_id = %s AND held = 'job'", (job,)).fetchall()
    return {r[0] for r in rows}


def _mailbox(conn: psycopg.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT job_id::text FROM job_releases").fetchall()}


def test_a_resume_frees_the_first_thousand_and_the_reaper_the_rest(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", paused=True)
        conn.execute(HELD, {"job": job, "n": 2500})
        order = [r[0] for r in conn.execute(CLAIM_ORDER, (job,)).fetchall()]
        conn.execute("UPDATE jobs SET paused = false WHERE id = %s", (job,))
        row = conn.execute(q("sync_job_gates"), {"id": job}).fetchone()
        assert row is not None and row[0] == 1000, "the resume frees 1000"
        held = _held(conn, job)
        assert set(order[1000:]) == held, "the first 1000 in claim order are the ones freed"
        assert _mailbox(conn) == {job}, "the rest is left to the Reaper"
        with queue.connect(dsn) as worker:  # the Reaper's connection options
            assert queue.release_held_runs(worker) == 0, "the backstop leaves them to release_resumed_runs"
            assert queue.release_resumed_runs(worker, 1000) == (1000, True)
            assert _held(conn, job) == set(order[2000:]), "the next 1000 in claim order"
            assert _mailbox(conn) == {job}, "a full batch: maybe more"
            assert queue.release_resumed_runs(worker, 1000) == (500, True)
            assert _held(conn, job) == set() and _mailbox(conn) == set(), "a short batch: done"
            assert queue.release_resumed_runs(worker, 1000) == (0, False)


def test_a_small_resume_frees_everything_at_once(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", paused=True)
        conn.execute(HELD, {"job": job, "n": 999})
        conn.execute("UPDATE jobs SET paused = false WHERE id = %s", (job,))
        row = conn.execute(q("sync_job_gates"), {"id": job}).fetchone()
        assert row is not None and row[0] == 999
        assert _held(conn, job) == set() and _mailbox(conn) == set()


def test_a_job_paused_again_leaves_the_mailbox_with_its_runs_held(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/", paused=True)
        conn.execute(HELD, {"job": job, "n": 1500})
        conn.execute("UPDATE jobs SET paused = false WHERE id = %s", (job,))
        conn.execute(q("sync_job_gates"), {"id": job})
        conn.execute("UPDATE jobs SET paused = true WHERE id = %s", (job,))
        with queue.connect(dsn) as worker:
            assert queue.release_resumed_runs(worker, 1000) == (0, True)
        assert len(_held(conn, job)) == 500, "a paused job's runs stay held"
        assert _mailbox(conn) == set(), "until its next resume writes it again"


def test_a_project_resume_leaves_each_job_with_held_runs_to_the_reaper(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        jobs = [make_job(conn, "http://x/", paused=True) for _ in range(3)]
        for job, n in zip(jobs, (800, 700, 5), strict=True):
            conn.execute(HELD, {"job": job, "n": n})
        conn.execute("UPDATE jobs SET paused = false WHERE id = ANY(%s::uuid[])", (jobs,))
        row = conn.execute(q("release_jobs_runs"), {"ids": jobs}).fetchone()
        assert row is not None and row[0] == 1000, "1000 in all, however many jobs"
        assert _mailbox(conn) == set(jobs)
        with queue.connect(dsn) as worker:
            freed = 0
            while (got := queue.release_resumed_runs(worker, 1000))[1]:
                freed += got[0]
        assert freed == 505
        assert all(_held(conn, job) == set() for job in jobs) and _mailbox(conn) == set()


def test_every_run_of_a_resumed_backlog_is_dispatched(
    dsn: str, strait: Server, clients: Any, endpoint: Endpoint
) -> None:
    """Through the API and a running worker: the resume answers, and every run set aside while its
    job was paused reaches the endpoint once, the Reaper freeing what the resume left."""
    _, c, key = clients
    job = make_api_job(c, endpoint, "held")
    with httpx.Client(base_url=strait.base, headers={"Authorization": f"Bearer {key['key']}"}, timeout=10) as h:
        assert h.post(f"/v1/jobs/{job['id']}/pause").status_code == 200
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(HELD.replace("'p'", "'p1'"), {"job": job["id"], "n": 3000})
        resumed = h.post(f"/v1/jobs/{job['id']}/resume")
        assert resumed.status_code == 200 and not resumed.json()["paused"]
    wait_for(lambda: len(set(endpoint.run_ids())) >= 3000, 30, what="every held run dispatched")
    # the 30 s backstop (release_held_runs) frees at most 1000 runs of a job a pass: the other 1000
    # at least were the Reaper's
    assert "of resumed jobs back in the queue" in strait.logs(), "the Reaper freed what the resume left"
    with psycopg.connect(dsn) as conn:
        assert _mailbox(conn) == set()
        row = conn.execute("SELECT count(*) FROM job_runs WHERE job_id = %s AND held IS NOT NULL", (job["id"],))
        assert row.fetchone() == (0,)
    assert len(endpoint.run_ids()) == 3000, "each run once"


def test_the_backstop_leaves_a_large_held_set_to_the_reaper(dsn: str) -> None:
    """Runs a job's update did not free (a claim held them just after it, or the job became runnable
    some other way): the 30 s backstop frees 1000 of a job a pass, and hands a job with that many on to
    the Reaper's batches instead of taking 30 s for each next 1000."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = make_job(conn, "http://x/")  # runnable, its runs held all the same
        conn.execute(HELD, {"job": job, "n": 2500})
        with queue.connect(dsn) as worker:
            assert queue.release_held_runs(worker) == 1000
            assert _mailbox(conn) == {job}
            assert queue.release_resumed_runs(worker, 5000) == (1500, True)
        assert _held(conn, job) == set() and _mailbox(conn) == set()
