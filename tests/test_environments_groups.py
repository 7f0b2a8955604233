"""Environments, job groups and project pause (migration 0007), on a real server and real endpoints:
CRUD and validation (a bad request is a 4xx envelope and writes nothing), tenant isolation, an
environment's ENDPOINT_URL routing a job's runs (and back), a group's pause-all and resume-all,
a project's pause (triggers refused, queued runs held, cron ticks skipped, all released on resume),
and the official client's environments and job_groups services."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from strait_actors.store import schedules
from tests.client_helpers import make_job, wait_terminal
from tests.conftest import Endpoint, Server, start_strait, stop_strait, wait_for
from tests.helpers import make_job as db_job
from tests.test_concurrency_limits import trigger_all


def _http(server: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _send(h: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    """JSON as the standard encoder writes it (escapes: a lone surrogate or a NUL travels as \\uXXXX)."""
    return h.request(method, path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def _error(r: httpx.Response, status: int) -> str:
    """The answer is `status` in the contract's envelope; its message."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert body["error"]["message"] == body["message"] and body["request_id"], body
    return str(body["message"])


def _count(dsn: str, sql: str, *args: Any) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row else 0


def _held(dsn: str, job_ids: list[str]) -> int:
    return _count(
        dsn,
        "SELECT count(*) FROM job_runs WHERE job_id = ANY(%s::uuid[]) AND status = 'queued' AND held = 'job'",
        job_ids,
    )


# ---------------------------------------------------------------------------- environments


def test_environment_crud_and_validation(strait: Server, clients: Any, endpoint: Endpoint) -> None:
    _, _, key = clients
    with _http(strait, key["key"]) as h:
        made = h.post(
            "/v1/environments",
            json={"name": " staging ", "slug": "stg", "description": "d", "variables": {"REGION": "eu"}},
        )
        assert made.status_code == 201, made.text
        env = made.json()
        assert (env["name"], env["slug"], env["description"], env["variables"]) == (
            "staging",
            "stg",
            "d",
            {"REGION": "eu"},
        )
        assert env["project_id"] == "p1" and env["created_at"].endswith("Z")
        eid = env["id"]
        assert h.get(f"/v1/environments/{eid}").json() == env
        assert h.get(f"/v1/environments/{eid}/variables").json() == {
            "environment_id": eid,
            "variables": {"REGION": "eu"},
        }
        listed = h.get("/v1/environments").json()
        assert [e["id"] for e in listed["data"]] == [eid] and listed["has_more"] is False

        bad: list[tuple[dict[str, Any], int]] = [
            ({}, 422),  # no name
            ({"name": "   "}, 422),
            ({"name": "n" * 256}, 422),
            ({"name": 5}, 422),
            ({"name": "x", "slug": "Not A Slug"}, 422),
            ({"name": "x", "description": "d" * 2001}, 422),
            ({"name": "x", "variables": ["A"]}, 422),
            ({"name": "x", "variables": {"A": 1}}, 422),
            ({"name": "x", "variables": {f"V{i}": "v" for i in range(101)}}, 422),
            ({"name": "x", "variables": {"1BAD": "v"}}, 400),
            ({"name": "x", "variables": {"A-B": "v"}}, 400),
            ({"name": "x", "variables": {"A": "a\u0000b"}}, 400),
            ({"name": "x", "variables": {"A": "\ud800"}}, 400),
            ({"name": "x", "variables": {"A": "v" * 8193}}, 400),
            ({"name": "x", "variables": {"ENDPOINT_URL": "ftp://example.com/x"}}, 400),
            ({"name": "x", "variables": {"ENDPOINT_URL": ""}}, 400),
            ({"name": "x", "variables": {"ENDPOINT_URL": "http://exa mple.com/"}}, 400),
            ({"name": "x", "project_id": "p2"}, 403),
            ({"name": "staging"}, 409),  # the name is taken in the project
        ]
        for body, status in bad:
            _error(_send(h, "POST", "/v1/environments", body), status)
            if status == 400:  # the same variables in an update
                _error(_send(h, "PATCH", f"/v1/environments/{eid}", body), status)
        # nothing half-written: one environment, as it was
        assert [e["id"] for e in h.get("/v1/environments").json()["data"]] == [eid]
        assert h.get(f"/v1/environments/{eid}").json() == env

        # PATCH: fields sent only; variables replaced as a whole; an empty string clears slug/description
        kept = h.patch(f"/v1/environments/{eid}", json={"description": "new"}).json()
        assert (kept["description"], kept["variables"], kept["slug"]) == ("new", {"REGION": "eu"}, "stg")
        replaced = h.patch(f"/v1/environments/{eid}", json={"variables": {"B": "2"}, "slug": ""}).json()
        assert replaced["variables"] == {"B": "2"} and "slug" not in replaced
        h.post("/v1/environments", json={"name": "prod"}).raise_for_status()
        _error(h.patch(f"/v1/environments/{eid}", json={"name": "prod"}), 409)
        _error(h.patch(f"/v1/environments/{eid}", json={"name": ""}), 422)

        # a job's environment_id must name an environment of its project
        job = make_job_http(h, endpoint, "bound")
        for ref in ("nope", "00000000-0000-0000-0000-000000000000"):
            assert "environment not found" in _error(
                h.patch(f"/v1/jobs/{job['id']}", json={"environment_id": ref}), 400
            )
            body = {**job_body(endpoint, f"x-{ref[:4]}"), "environment_id": ref}
            assert "environment not found" in _error(h.post("/v1/jobs", json=body), 400)
        assert h.get("/v1/jobs", params={"slug": "x-nope"}).json()["data"] == []
        bound = h.patch(f"/v1/jobs/{job['id']}", json={"environment_id": eid.upper()}).json()
        assert bound["environment_id"] == eid
        # an environment in use is not deleted (409); unbound, it is (204), then gone (404)
        assert "unbind" in _error(h.delete(f"/v1/environments/{eid}"), 409)
        assert "environment_id" not in h.patch(f"/v1/jobs/{job['id']}", json={"environment_id": ""}).json()
        assert h.delete(f"/v1/environments/{eid}").status_code == 204
        _error(h.get(f"/v1/environments/{eid}"), 404)
        _error(h.get("/v1/environments/not-a-uuid/variables"), 404)


def job_body(endpoint: Endpoint, slug: str, **extra: Any) -> dict[str, Any]:
    return {"project_id": "p1", "name": slug, "slug": slug, "endpoint_url": endpoint.url, "timeout_secs": 10, **extra}


def make_job_http(h: httpx.Client, endpoint: Endpoint, slug: str, **extra: Any) -> dict[str, Any]:
    r = h.post("/v1/jobs", json=job_body(endpoint, slug, **extra))
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_an_unsafe_endpoint_override_is_refused_at_save(dsn: str, tmp_path: Path) -> None:
    """engine.md §3.6 with the guard on: an ENDPOINT_URL a job endpoint could not have is a 400 at
    create and update, and nothing is stored."""
    server = start_strait({"DATABASE_URL": dsn, "ALLOW_PRIVATE_ENDPOINTS": "false"}, tmp_path, processes=1)
    try:
        with server.client("p1") as h:
            h.post("/v1/projects", json={"id": "p1", "org_id": "o1", "name": "P1"}).raise_for_status()
            for url in ("http://127.0.0.1/x", "http://10.1.2.3/x", "http://[::1]/x", "http://localhost/x"):
                body = {"name": "e", "variables": {"ENDPOINT_URL": url}}
                assert "invalid ENDPOINT_URL" in _error(h.post("/v1/environments", json=body), 400)
            env = h.post("/v1/environments", json={"name": "e", "variables": {"A": "b"}}).json()
            body = {"variables": {"ENDPOINT_URL": "http://169.254.169.254/latest"}}
            _error(h.patch(f"/v1/environments/{env['id']}", json=body), 400)
            assert h.get(f"/v1/environments/{env['id']}").json()["variables"] == {"A": "b"}
            assert len(h.get("/v1/environments").json()["data"]) == 1
    finally:
        stop_strait(server)


def test_an_environments_endpoint_url_routes_its_jobs_runs(
    dsn: str, strait: Server, clients: Any, endpoint: Endpoint
) -> None:
    """A job bound to an environment with ENDPOINT_URL is dispatched there (its own endpoint gets
    nothing); the variable removed, its runs go to its own endpoint again; set again on the
    environment, every bound job follows in the same write."""
    _, c, key = clients
    own, routed = f"{endpoint.url}?as=own", f"{endpoint.url}?as=env"
    with _http(strait, key["key"]) as h:
        env = h.post("/v1/environments", json={"name": "routed", "variables": {"ENDPOINT_URL": routed}}).json()
        job = make_job_http(h, endpoint, "routed", endpoint_url=own, environment_id=env["id"])
        other = make_job_http(h, endpoint, "unbound", endpoint_url=own)

        def sent_to(job_id: str) -> str:
            run = h.post(f"/v1/jobs/{job_id}/trigger", json={"payload": {"j": job_id}}).json()
            assert wait_terminal(c, run["id"])["status"] == "completed"
            [seen] = [r for r in endpoint.requests if r["headers"].get("X-Run-ID") == run["id"]]
            return str(seen["query"])

        assert sent_to(job["id"]) == "as=env"
        assert sent_to(other["id"]) == "as=own"
        h.patch(f"/v1/environments/{env['id']}", json={"variables": {"OTHER": "x"}}).raise_for_status()
        assert sent_to(job["id"]) == "as=own"
        # bound after the fact, and by the environment's write: both follow
        h.patch(f"/v1/jobs/{other['id']}", json={"environment_id": env["id"]}).raise_for_status()
        h.patch(f"/v1/environments/{env['id']}", json={"variables": {"ENDPOINT_URL": routed}}).raise_for_status()
        assert sent_to(other["id"]) == "as=env" and sent_to(job["id"]) == "as=env"
        # the job's own PATCH keeps the override; unbinding drops it
        h.patch(f"/v1/jobs/{job['id']}", json={"description": "v2"}).raise_for_status()
        assert sent_to(job["id"]) == "as=env"
        h.patch(f"/v1/jobs/{job['id']}", json={"environment_id": ""}).raise_for_status()
        assert sent_to(job["id"]) == "as=own"
    overrides = _count(dsn, "SELECT count(*) FROM jobs WHERE endpoint_override IS NOT NULL")
    assert overrides == 1  # `other` only


# ---------------------------------------------------------------------------- job groups


def test_job_group_crud_jobs_stats_and_delete_unbinds(strait: Server, clients: Any, endpoint: Endpoint) -> None:
    _, c, key = clients
    with _http(strait, key["key"]) as h:
        made = h.post("/v1/job-groups", json={"name": "billing", "description": "d"})
        assert made.status_code == 201, made.text
        group = made.json()
        gid = group["id"]
        assert (group["name"], group["description"], group["project_id"]) == ("billing", "d", "p1")
        for body, status in [({}, 422), ({"name": "g" * 256}, 422), ({"name": "billing"}, 409), ({"name": []}, 422)]:
            _error(h.post("/v1/job-groups", json=body), status)
        assert [g["id"] for g in h.get("/v1/job-groups").json()["data"]] == [gid]
        assert h.patch(f"/v1/job-groups/{gid}", json={"description": ""}).json().get("description") is None

        members = [make_job_http(h, endpoint, f"m{i}", group_id=gid) for i in range(3)]
        outsider = make_job_http(h, endpoint, "outsider")
        assert "job group not found" in _error(h.post("/v1/jobs", json=job_body(endpoint, "x", group_id="g")), 400)
        page = h.get(f"/v1/job-groups/{gid}/jobs", params={"limit": 2}).json()
        assert page["has_more"] and len(page["data"]) == 2
        rest = h.get(f"/v1/job-groups/{gid}/jobs", params={"cursor": page["next_cursor"]}).json()
        assert {j["id"] for j in page["data"] + rest["data"]} == {j["id"] for j in members}
        for member in members[:2]:
            run = h.post(f"/v1/jobs/{member['id']}/trigger", json={"payload": {}}).json()
            assert wait_terminal(c, run["id"])["status"] == "completed"
        h.post(f"/v1/jobs/{outsider['id']}/trigger", json={"payload": {}}).raise_for_status()
        stats = h.get(f"/v1/job-groups/{gid}/stats").json()
        assert stats == {
            "group_id": gid,
            "job_count": 3,
            "paused_job_count": 0,
            "run_count": 2,
            "runs_by_status": {"completed": 2},
        }
        assert h.delete(f"/v1/job-groups/{gid}").status_code == 204
        assert all("group_id" not in h.get(f"/v1/jobs/{j['id']}").json() for j in members)
        _error(h.get(f"/v1/job-groups/{gid}/jobs"), 404)
        _error(h.delete(f"/v1/job-groups/{gid}"), 404)


def test_group_pause_all_holds_runs_and_resume_all_releases_them(
    dsn: str, strait: Server, clients: Any, endpoint: Endpoint
) -> None:
    """pause-all pauses every job of the group as job pause does: triggers refused, queued runs set
    aside (the endpoint gets none of them), a job outside the group unaffected; resume-all brings
    the runs back and they complete."""
    _, c, key = clients
    with _http(strait, key["key"]) as h:
        gid = h.post("/v1/job-groups", json={"name": "g"}).json()["id"]
        members = [make_job_http(h, endpoint, f"g{i}", group_id=gid)["id"] for i in range(2)]
        outsider = make_job_http(h, endpoint, "outsider")["id"]
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        queued = [
            run_id
            for job in members
            for run_id in trigger_all(
                strait, key["key"], job, [{"payload": {"i": i}, "scheduled_at": soon} for i in range(10)]
            )
        ]
        _error(h.post(f"/v1/job-groups/{gid}/pause-all", json={"reason": 5}), 400)
        paused = h.post(f"/v1/job-groups/{gid}/pause-all", json={"reason": "deploy"}).json()
        assert paused == {"group_id": gid, "paused": True, "updated": 2}
        assert h.post(f"/v1/job-groups/{gid}/pause-all").json()["updated"] == 0
        assert all(h.get(f"/v1/jobs/{j}").json()["pause_reason"] == "deploy" for j in members)
        assert "paused" in _error(h.post(f"/v1/jobs/{members[0]}/trigger", json={"payload": {}}), 409)
        free = h.post(f"/v1/jobs/{outsider}/trigger", json={"payload": {}}).json()
        assert wait_terminal(c, free["id"])["status"] == "completed"
        wait_for(lambda: _held(dsn, members) == 20, 20, what="the group's runs set aside")
        assert not set(endpoint.run_ids()) & set(queued)
        assert h.get(f"/v1/job-groups/{gid}/stats").json()["paused_job_count"] == 2
        resumed = h.post(f"/v1/job-groups/{gid}/resume-all").json()
        assert resumed == {"group_id": gid, "paused": False, "updated": 2}
        assert not any(h.get(f"/v1/jobs/{j}").json()["paused"] for j in members)
    for run_id in queued:
        assert wait_terminal(c, run_id)["status"] == "completed"


# ---------------------------------------------------------------------------- project pause


def test_project_pause_refuses_triggers_holds_runs_and_resume_releases_them(
    dsn: str, strait: Server, clients: Any, endpoint: Endpoint
) -> None:
    _, c, key = clients
    with _http(strait, key["key"]) as h, strait.client() as admin:
        jobs = [make_job_http(h, endpoint, f"pp{i}")["id"] for i in range(2)]
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        queued = [
            run_id
            for job in jobs
            for run_id in trigger_all(
                strait, key["key"], job, [{"payload": {"i": i}, "scheduled_at": soon} for i in range(10)]
            )
        ]
        # a tenant's key cannot pause its project (an operator's act); bad reasons are 400s
        _error(h.post("/v1/projects/p1/pause"), 403)
        _error(admin.post("/v1/projects/p1/pause", json={"reason": "r" * 1001}), 400)
        _error(admin.post("/v1/projects/nope/pause"), 404)
        assert h.get("/v1/projects/p1").json()["paused"] is False
        first = admin.post("/v1/projects/p1/pause", json={"reason": "incident"}).json()
        assert (first["paused"], first["pause_reason"]) == (True, "incident") and first["paused_at"]
        again = admin.post("/v1/projects/p1/pause", json={"reason": "incident"}).json()
        assert again["paused_at"] == first["paused_at"]
        shown = h.get("/v1/projects/p1").json()
        assert (shown["paused"], shown["pause_reason"], shown["paused_at"]) == (True, "incident", first["paused_at"])
        message = _error(h.post(f"/v1/jobs/{jobs[0]}/trigger", json={"payload": {}}), 409)
        assert message == "project is paused -- resume it before triggering new runs"
        _error(h.post(f"/v1/jobs/{jobs[0]}/trigger/bulk", json={"items": [{"payload": {}}]}), 409)
        # a job created while the project is paused is paused with it
        late = make_job_http(h, endpoint, "late")
        assert late["project_paused"] is True
        _error(h.post(f"/v1/jobs/{late['id']}/trigger", json={"payload": {}}), 409)
        wait_for(lambda: _held(dsn, jobs) == 20, 20, what="the project's runs set aside")
        assert not set(endpoint.run_ids()) & set(queued)
        # a job resumed on its own stays held while its project is paused
        h.post(f"/v1/jobs/{jobs[0]}/pause").raise_for_status()
        h.post(f"/v1/jobs/{jobs[0]}/resume").raise_for_status()
        assert _held(dsn, jobs) == 20
        resumed = admin.post("/v1/projects/p1/resume").json()
        assert (resumed["paused"], resumed.get("paused_at"), resumed.get("pause_reason")) == (False, None, None)
        assert "project_paused" not in h.get(f"/v1/jobs/{late['id']}").json()
        for run_id in queued:
            assert wait_terminal(c, run_id)["status"] == "completed"
        run = h.post(f"/v1/jobs/{late['id']}/trigger", json={"payload": {}}).json()
        assert wait_terminal(c, run["id"])["status"] == "completed"


def test_cron_ticks_of_a_paused_projects_jobs_are_skipped(dsn: str) -> None:
    at = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        held = db_job(conn, "http://x/", cron="*/5 * * * *", next_fire_at=at, project_paused=True)
        both = db_job(conn, "http://x/", cron="*/5 * * * *", next_fire_at=at, project_paused=True, paused=True)
        fine = db_job(conn, "http://x/", cron="*/5 * * * *", next_fire_at=at)
        fired = {f.job_id: f.skipped for f in schedules.fire_due(conn, at)}
        assert fired == {held: "project_paused", both: "job_off", fine: None}
        counts = Counter(r[0] for r in conn.execute("SELECT job_id::text FROM job_runs WHERE triggered_by = 'cron'"))
        assert counts == Counter({fine: 1})


# ---------------------------------------------------------------------------- tenants and the client


def test_another_projects_environments_and_groups_are_not_found(strait: Server, endpoint: Endpoint) -> None:
    keys = {}
    with strait.client() as admin:
        for pid in ("pa", "pb"):
            admin.post("/v1/projects", json={"id": pid, "org_id": f"o-{pid}", "name": pid}).raise_for_status()
            body = {"project_id": pid, "name": "k", "scopes": ["*"]}
            keys[pid] = admin.post("/v1/api-keys", json=body).json()["key"]
    with _http(strait, keys["pa"]) as a, _http(strait, keys["pb"]) as b:
        env = b.post("/v1/environments", json={"name": "e", "variables": {"S": "v"}}).json()
        group = b.post("/v1/job-groups", json={"name": "g"}).json()
        job = b.post("/v1/jobs", json={**job_body(endpoint, "b"), "project_id": "pb", "group_id": group["id"]}).json()
        denied: list[tuple[str, str, Any]] = [
            ("GET", f"/v1/environments/{env['id']}", None),
            ("PATCH", f"/v1/environments/{env['id']}", {"name": "mine"}),
            ("DELETE", f"/v1/environments/{env['id']}", None),
            ("GET", f"/v1/environments/{env['id']}/variables", None),
            ("GET", f"/v1/job-groups/{group['id']}", None),
            ("PATCH", f"/v1/job-groups/{group['id']}", {"name": "mine"}),
            ("DELETE", f"/v1/job-groups/{group['id']}", None),
            ("GET", f"/v1/job-groups/{group['id']}/jobs", None),
            ("GET", f"/v1/job-groups/{group['id']}/stats", None),
            ("POST", f"/v1/job-groups/{group['id']}/pause-all", None),
            ("POST", f"/v1/job-groups/{group['id']}/resume-all", None),
            ("POST", "/v1/environments", {"name": "x", "project_id": "pb"}),
            ("POST", "/v1/job-groups", {"name": "x", "project_id": "pb"}),
            ("POST", "/v1/projects/pb/pause", None),
            ("POST", "/v1/projects/pb/resume", None),
        ]
        problems = []
        for method, path, body in denied:
            r = a.request(method, path, json=body)
            if r.status_code not in (403, 404) or env["id"] in r.text or group["id"] in r.text:
                problems.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
        for path in ("/v1/environments", "/v1/job-groups"):
            r = a.get(path, headers={"X-Project-Id": "pb"})
            if r.status_code != 200 or r.json()["data"]:
                problems.append(f"GET {path}: {r.status_code} {r.text[:200]}")
        # a's own job cannot bind b's environment or group (they are not found in a's project)
        mine = {**job_body(endpoint, "a"), "project_id": "pa"}
        for ref in ({"environment_id": env["id"]}, {"group_id": group["id"]}):
            r = a.post("/v1/jobs", json={**mine, **ref})
            if r.status_code != 400:
                problems.append(f"POST /v1/jobs with {ref}: {r.status_code} {r.text[:200]}")
        assert not problems, "\n".join(problems)
        assert b.get(f"/v1/environments/{env['id']}").json() == env
        assert b.get(f"/v1/job-groups/{group['id']}").json() == group
        assert b.get(f"/v1/jobs/{job['id']}").json()["paused"] is False


def test_the_official_client_manages_environments_and_job_groups(clients: Any, endpoint: Endpoint) -> None:
    admin, c, _ = clients
    env = c.environments.create({"project_id": "p1", "name": "qa", "variables": {"ENDPOINT_URL": endpoint.url}})
    assert c.environments.get(env["id"]) == env
    assert [e["id"] for e in c.environments.list()["data"]] == [env["id"]]
    assert c.environments.list_variables(env["id"])["variables"] == {"ENDPOINT_URL": endpoint.url}
    assert c.environments.update(env["id"], {"description": "QA"})["description"] == "QA"
    group = c.job_groups.create({"project_id": "p1", "name": "nightly"})
    assert c.job_groups.get(group["id"]) == group
    assert [g["id"] for g in c.job_groups.list()["data"]] == [group["id"]]
    job = make_job(c, endpoint, "grouped", group_id=group["id"], environment_id=env["id"])
    assert [j["id"] for j in c.job_groups.list_jobs(group["id"])["data"]] == [job["id"]]
    assert c.job_groups.pause_all(group["id"])["updated"] == 1
    assert c.job_groups.get_stats(group["id"])["paused_job_count"] == 1
    assert c.job_groups.resume_all(group["id"])["updated"] == 1
    run = c.jobs.trigger(job["id"], {"payload": {"via": "client"}})
    assert wait_terminal(c, run["id"])["status"] == "completed"
    c.jobs.update(job["id"], {"environment_id": ""})
    assert c.environments.delete(env["id"]) == {}
    assert c.job_groups.delete(group["id"]) == {}
    # the internal secret names the project in the query
    assert admin.job_groups.list(query={"project_id": "p1"})["data"] == []
    assert admin.environments.list(query={"project_id": "p1"})["data"] == []
