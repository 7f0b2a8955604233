"""What the API fuzzer (tests/test_fuzz.py) found and was fixed, one focused case per class."""

from __future__ import annotations

import psycopg

from tests.conftest import Endpoint, Server, wait_for
from tests.test_api_errors import JSON, Case, base_job, fixtures, no_traceback, run_cases


def test_deleting_a_job_leaves_none_of_its_runs_events_behind(strait: Server, endpoint: Endpoint) -> None:
    """run_events has no foreign key: the cascade from jobs to job_runs used to orphan them."""
    f = fixtures(strait, endpoint)  # a job with a canceled run (two events)
    dsn = strait.env["DATABASE_URL"]
    with strait.client("p1") as c:
        job = c.post("/v1/jobs", json=base_job(endpoint)).json()["id"]
        run = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"n": 1}}).json()["id"]
        wait_for(lambda: c.get(f"/v1/runs/{run}").json()["status"] == "completed", what="the run to complete")
        assert c.get(f"/v1/runs/{run}/events").json()["data"], "the run wrote its state changes"
        assert c.delete(f"/v1/jobs/{job}").status_code == 204
        assert c.delete(f"/v1/jobs/{f['job']}").status_code == 204
        assert c.get(f"/v1/runs/{run}").status_code == 404
    with psycopg.connect(dsn) as conn:
        orphans = conn.execute(
            "SELECT count(*) FROM run_events e LEFT JOIN job_runs r ON r.id = e.run_id WHERE r.id IS NULL"
        ).fetchone()
        kept = conn.execute("SELECT count(*) FROM run_events").fetchone()
    assert orphans == (0,), f"{orphans[0] if orphans else '?'} events of deleted runs are left"
    assert kept == (0,), "every run was deleted with its job, so no event may remain"
    no_traceback(strait)


def test_lone_surrogates_in_bodies_are_replaced_or_refused_never_a_500(strait: Server, endpoint: Endpoint) -> None:
    """JSON may escape a lone surrogate (\\ud800); PostgreSQL text and our JSON answers cannot hold
    one. Stored strings get U+FFFD (api.md §0.3), messages that quote them too."""
    fixtures(strait, endpoint)
    run_cases(
        strait,
        [
            Case(
                "a surrogate scope is quoted in the message",
                "POST",
                "/v1/api-keys",
                400,
                "invalid scope",
                content=b'{"project_id": "p1", "name": "k", "scopes": ["\\ud800"]}',
                headers=JSON,
            ),
            Case(
                "duplicate surrogate keys are quoted in the message",
                "POST",
                "/v1/jobs",
                400,
                "duplicate key",
                content=b'{"\\ud800": 1, "\\ud800": 2}',
                headers=JSON,
            ),
        ],
    )
    with strait.client() as c:
        body = b'{"id": "p\\ud800", "org_id": "o\\udfff", "name": "P\\ud800"}'
        created = c.post("/v1/projects", content=body, headers=JSON)
        assert created.status_code == 201, created.text
        assert created.json()["id"] == "p\ufffd" and created.json()["org_id"] == "o\ufffd"
        assert c.get("/v1/projects/p\ufffd").json()["name"] == "P\ufffd"
        key = c.post(
            "/v1/api-keys",
            content=b'{"project_id": "p1", "name": "k\\udfff", "scopes": ["*"], "environment_id": "\\ud800"}',
            headers=JSON,
        )
        assert key.status_code == 201, key.text
        assert key.json()["name"] == "k\ufffd"
        dlq = c.post("/v1/runs/bulk-dlq-replay", content=b'{"project_id": "\\ud800"}', headers=JSON)
        assert dlq.status_code == 200 and dlq.json()["count"] == 0, dlq.text
    no_traceback(strait)
