"""A tenant's API key reaches only its own project: another project's ids and filters find nothing
(404 or 403, or an empty list), on every route, and nothing of the other project changes."""

from __future__ import annotations

from typing import Any

import httpx
from aiohttp import web

from tests.conftest import Endpoint, Server, wait_for
from tests.test_api_errors import base_job


def _tenant(strait: Server, endpoint: Endpoint, pid: str) -> dict[str, Any]:
    """A project with a key, a job (with a version), a completed run and a dead-lettered run."""
    with strait.client() as admin:
        admin.post("/v1/projects", json={"id": pid, "org_id": f"org-{pid}", "name": pid}).raise_for_status()
        key = admin.post("/v1/api-keys", json={"project_id": pid, "name": "k", "scopes": ["*"]}).json()
    c = httpx.Client(base_url=strait.base, headers={"Authorization": f"Bearer {key['key']}"}, timeout=30)
    job = c.post("/v1/jobs", json=base_job(endpoint, project_id=pid, max_attempts=1)).json()
    c.patch(f"/v1/jobs/{job['id']}", json={"description": "v2"}).raise_for_status()
    version = c.get(f"/v1/jobs/{job['id']}/versions").json()["data"][0]["version_id"]
    run = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {"ok": True}}).json()
    dead = c.post(f"/v1/jobs/{job['id']}/trigger", json={"payload": {"fail": True}}).json()
    for r in (run, dead):
        wait_for(lambda r=r: c.get(f"/v1/runs/{r['id']}").json()["status"] in ("completed", "dead_letter"))
    return {"pid": pid, "c": c, "key": key, "job": job["id"], "version": version, "run": run["id"], "dead": dead["id"]}


def test_one_tenant_cannot_see_or_touch_another(strait: Server, endpoint: Endpoint) -> None:
    def answer(seen: dict[str, Any]) -> Any:
        return web.json_response({}, status=400) if b"fail" in seen["body"] else {"ok": True}

    endpoint.behave = answer
    a, b = _tenant(strait, endpoint, "pa"), _tenant(strait, endpoint, "pb")
    c: httpx.Client = a["c"]
    job, run, dead = b["job"], b["run"], b["dead"]
    denied: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/jobs/{job}", None),
        ("PATCH", f"/v1/jobs/{job}", {"description": "mine now"}),
        ("DELETE", f"/v1/jobs/{job}", None),
        ("GET", f"/v1/jobs/{job}/versions", None),
        ("GET", f"/v1/jobs/{job}/versions/{b['version']}", None),
        ("POST", f"/v1/jobs/{job}/trigger", {"payload": {}}),
        ("POST", f"/v1/jobs/{job}/trigger", {"payload": {}, "dry_run": True}),
        ("POST", f"/v1/jobs/{job}/trigger/bulk", {"items": [{"payload": {}}]}),
        ("GET", f"/v1/runs/{run}", None),
        ("DELETE", f"/v1/runs/{run}", None),
        ("POST", f"/v1/runs/{run}/replay", None),
        ("POST", f"/v1/runs/{dead}/dlq-replay", None),
        ("GET", f"/v1/runs/{run}/events", None),
        ("GET", f"/v1/projects/{b['pid']}", None),
        ("DELETE", f"/v1/api-keys/{b['key']['id']}", None),
        ("POST", "/v1/jobs", base_job(endpoint, project_id=b["pid"])),
        ("POST", "/v1/api-keys", {"project_id": b["pid"], "name": "x", "scopes": ["*"]}),
        ("POST", "/v1/runs/bulk-dlq-replay", {"project_id": b["pid"]}),
    ]
    problems = []
    for method, path, body in denied:
        r = c.request(method, path, json=body)
        if r.status_code not in (403, 404) or b["job"] in r.text or b["run"] in r.text:
            problems.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
    lists = [
        "/v1/jobs",
        f"/v1/jobs?slug={base_job(endpoint)['slug']}",
        f"/v1/runs?job_id={job}",
        f"/v1/runs?project_id={b['pid']}",
        "/v1/runs/dlq",
        f"/v1/runs/dlq?project_id={b['pid']}",
        "/v1/api-keys",
        f"/v1/api-keys?project_id={b['pid']}",
    ]
    for path in lists:
        r = c.get(path, headers={"X-Project-Id": b["pid"]})
        if r.status_code >= 500 or any(x in r.text for x in (b["job"], b["run"], b["dead"], b["key"]["id"])):
            problems.append(f"GET {path}: {r.status_code} {r.text[:200]}")
    # dlq-replay by ids only replays the caller's own runs
    r = c.post("/v1/runs/bulk-dlq-replay", json={"run_ids": [dead]})
    if r.status_code >= 500 or dead in r.text:
        problems.append(f"bulk-dlq-replay by id: {r.status_code} {r.text[:200]}")
    assert not problems, "\n".join(problems)
    # and nothing of b's changed
    own: httpx.Client = b["c"]
    assert own.get(f"/v1/jobs/{job}").json()["description"] != "mine now"
    assert own.get(f"/v1/runs/{run}").json()["status"] == "completed"
    assert own.get(f"/v1/runs/{dead}").json()["status"] == "dead_letter"
    assert [j["id"] for j in own.get("/v1/jobs").json()["data"]] == [job]
    assert len(own.get(f"/v1/runs?job_id={job}").json()["data"]) == 2
    assert own.get("/v1/api-keys").json()["data"][0]["id"] == b["key"]["id"]
    for t in (a, b):
        t["c"].close()
