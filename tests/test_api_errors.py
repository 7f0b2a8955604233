"""Every failure on /v1 is the contract's error envelope with the right status, never a 500
(api.md §2.3, §2.5, §4.2-4.4) — and a failed request leaves nothing half-written."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import SECRET, Endpoint, Server

CODES = {
    400: "bad_request",
    401: "authentication_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "internal_error",
    409: "conflict",
    413: "internal_error",
    415: "internal_error",
    422: "validation_failed",
}
JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    name: str
    method: str
    path: str
    status: int
    message: str = ""  # a substring of error.message, if the contract fixes the text
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = "secret"  # "secret" | "none" | "bad" | "noproject"
    details: bool = False  # error.details must be a non-empty list of strings


def envelope_problems(case: Case, r: httpx.Response) -> list[str]:
    """What is wrong with this answer, as readable strings (empty: all good)."""
    out: list[str] = []
    if r.status_code != case.status:
        return [f"{case.name}: status {r.status_code}, expected {case.status}: {r.text[:300]}"]
    try:
        body = r.json()
    except ValueError:
        return [f"{case.name}: body is not JSON: {r.text[:300]!r}"]
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return [f"{case.name}: no error envelope: {body!r}"]
    err = body["error"]
    if err.get("code") != CODES[case.status]:
        out.append(f"{case.name}: code {err.get('code')!r}, expected {CODES[case.status]!r}")
    if not isinstance(err.get("message"), str) or not err["message"]:
        out.append(f"{case.name}: error.message missing: {body!r}")
    elif case.message and case.message not in err["message"]:
        out.append(f"{case.name}: message {err['message']!r} lacks {case.message!r}")
    if body.get("message") != err.get("message"):
        out.append(f"{case.name}: top-level message {body.get('message')!r} != error.message")
    if not isinstance(body.get("request_id"), str) or not body["request_id"]:
        out.append(f"{case.name}: request_id missing: {body!r}")
    elif r.headers.get("X-Request-Id") != body["request_id"]:
        out.append(f"{case.name}: X-Request-Id header {r.headers.get('X-Request-Id')!r} != request_id")
    if case.details:
        details = err.get("details")
        if not isinstance(details, list) or not details or not all(isinstance(d, str) for d in details):
            out.append(f"{case.name}: details missing or malformed: {err!r}")
    return out


def send(server: Server, case: Case) -> httpx.Response:
    headers = {"Accept": "application/json", **case.headers}
    if case.auth in ("secret", "noproject"):
        headers.setdefault("Authorization", f"Bearer {SECRET}")
        if case.auth == "secret":
            headers.setdefault("X-Project-Id", "p1")
    elif case.auth == "bad":
        headers["Authorization"] = "Bearer not-the-secret-at-all-0000"
    kwargs: dict[str, Any] = {"headers": headers}
    if case.content is not None:
        kwargs["content"] = case.content
    elif case.json is not None:
        kwargs["json"] = case.json
    return httpx.request(case.method, server.base + case.path, timeout=30, **kwargs)


def run_cases(server: Server, cases: list[Case]) -> None:
    problems: list[str] = []
    for case in cases:
        try:
            r = send(server, case)
        except httpx.HTTPError as exc:
            problems.append(f"{case.name}: transport error {exc!r}")
            continue
        problems += envelope_problems(case, r)
    assert not problems, "\n".join(problems)


def base_job(endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    return {
        "project_id": "p1",
        "name": "Job",
        "slug": f"s-{uuid.uuid4().hex[:8]}",
        "endpoint_url": endpoint.url,
        **extra,
    }


def fixtures(server: Server, endpoint: Endpoint) -> dict[str, str]:
    """A project, a job with a payload schema, a disabled job and a canceled (terminal) run."""
    with server.client("p1") as c:
        c.post("/v1/projects", json={"id": "p1", "org_id": "o1", "name": "P1"}).raise_for_status()
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        job = c.post("/v1/jobs", json=base_job(endpoint, slug="main", payload_schema=schema))
        job.raise_for_status()
        disabled = c.post("/v1/jobs", json=base_job(endpoint, slug="off", enabled=False))
        disabled.raise_for_status()
        assert disabled.json()["enabled"] is False
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        run = c.post(f"/v1/jobs/{job.json()['id']}/trigger", json={"payload": {"n": 1}, "scheduled_at": later})
        assert run.status_code == 201, run.text
        assert c.delete(f"/v1/runs/{run.json()['id']}").json()["status"] == "canceled"
    return {"job": job.json()["id"], "disabled": disabled.json()["id"], "run": run.json()["id"]}


def no_traceback(server: Server) -> None:
    logs = server.logs()
    assert "Traceback" not in logs, logs[-4000:]


# ---- the tables ---------------------------------------------------------------------------------


def test_request_preconditions_and_routing(strait: Server, endpoint: Endpoint) -> None:
    f = fixtures(strait, endpoint)
    job, missing = f["job"], str(uuid.uuid4())
    big = b'{"name":"' + b"a" * (1024 * 1024 + 16) + b'"}'
    run_cases(
        strait,
        [
            Case("malformed JSON", "POST", "/v1/jobs", 400, "invalid request body", content=b'{"name":', headers=JSON),
            Case("duplicate keys", "POST", "/v1/jobs", 400, content=b'{"name":"a","name":"b"}', headers=JSON),
            Case(
                "duplicate payload keys",
                "POST",
                f"/v1/jobs/{job}/trigger",
                400,
                content=b'{"payload":{"n":1,"n":2}}',
                headers=JSON,
            ),
            Case("array body", "POST", "/v1/jobs", 400, json=[1, 2]),
            Case("array body on trigger", "POST", f"/v1/jobs/{job}/trigger", 400, json=[{"payload": {"n": 1}}]),
            Case("body over 1 MiB", "POST", "/v1/jobs", 413, content=big, headers=JSON),
            Case("text/plain body", "POST", "/v1/jobs", 415, content=b"{}", headers={"Content-Type": "text/plain"}),
            Case("Accept text/html", "GET", "/v1/jobs", 406, headers={"Accept": "text/html"}),
            Case("unknown route", "GET", "/v1/nope", 404),
            Case("unknown job id", "GET", f"/v1/jobs/{missing}", 404, "job not found"),
            Case("non-UUID job id", "GET", "/v1/jobs/not-a-uuid", 404, "job not found"),
            Case("trigger unknown job", "POST", f"/v1/jobs/{missing}/trigger", 404, "job not found", json={}),
            Case("unknown run id", "GET", f"/v1/runs/{missing}", 404, "run not found"),
            Case("non-UUID run id", "GET", "/v1/runs/nope", 404, "run not found"),
            Case("cancel unknown run", "DELETE", f"/v1/runs/{missing}", 404, "run not found"),
            Case("missing auth", "GET", "/v1/jobs", 401, auth="none"),
            Case("bad secret", "GET", "/v1/jobs", 401, auth="bad"),
            Case(
                "bad api key",
                "GET",
                "/v1/jobs",
                401,
                auth="none",
                headers={"Authorization": "Bearer strait_" + "0" * 64},
            ),
            Case("runs without project", "GET", "/v1/runs", 400, "project_id is required", auth="noproject"),
            Case("jobs without project", "GET", "/v1/jobs", 400, "project_id is required", auth="noproject"),
            Case("limit=0", "GET", "/v1/runs?limit=0", 400, "limit must be a positive integer"),
            Case("limit=abc", "GET", "/v1/jobs?limit=abc", 400, "limit must be a positive integer"),
            Case("garbage cursor", "GET", "/v1/runs?cursor=garbage", 400),
            Case("garbage cursor on jobs", "GET", "/v1/jobs?cursor=garbage", 400),
        ],
    )
    no_traceback(strait)


def test_job_validation(strait: Server, endpoint: Endpoint) -> None:
    fixtures(strait, endpoint)
    run_cases(
        strait,
        [
            Case("empty create", "POST", "/v1/jobs", 422, json={}, details=True),
            Case(
                "missing name and slug",
                "POST",
                "/v1/jobs",
                422,
                json={"project_id": "p1", "endpoint_url": endpoint.url},
                details=True,
            ),
            Case(
                "ftp endpoint", "POST", "/v1/jobs", 400, "endpoint_url", json=base_job(endpoint, endpoint_url="ftp://x")
            ),
            Case("bad cron", "POST", "/v1/jobs", 400, json=base_job(endpoint, cron="61 * * * *")),
            Case(
                "bad timezone",
                "POST",
                "/v1/jobs",
                400,
                json=base_job(endpoint, cron="0 * * * *", timezone="Mars/Olympus_Mons"),
            ),
            Case("timeout too long", "POST", "/v1/jobs", 400, json=base_job(endpoint, timeout_secs=100000)),
            Case(
                "unknown project",
                "POST",
                "/v1/jobs",
                404,
                "project not found",
                json=base_job(endpoint, project_id="nope"),
                auth="noproject",
            ),
            Case("duplicate slug", "POST", "/v1/jobs", 409, json=base_job(endpoint, slug="main")),
            Case("tag_value alone", "GET", "/v1/jobs?tag_value=x", 400),
        ],
    )
    with strait.client("p1") as c:
        slugs = sorted(j["slug"] for j in c.get("/v1/jobs").json()["data"])
        assert slugs == ["main", "off"], "no failed create left a job behind"
        body = c.post("/v1/jobs", json={"project_id": "p1"}).json()
        assert {d.split(":")[0] for d in body["error"]["details"]} >= {"name", "slug"}, body
    no_traceback(strait)


def test_trigger_validation(strait: Server, endpoint: Endpoint) -> None:
    f = fixtures(strait, endpoint)
    job, path = f["job"], f"/v1/jobs/{f['job']}"
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    run_cases(
        strait,
        [
            Case("priority 11", "POST", f"{path}/trigger", 422, json={"payload": {"n": 1}, "priority": 11}),
            Case(
                "scheduled in the past",
                "POST",
                f"{path}/trigger",
                400,
                json={"payload": {"n": 1}, "scheduled_at": past},
            ),
            Case(
                "payload fails schema",
                "POST",
                f"{path}/trigger",
                400,
                "payload validation failed",
                json={"payload": {"n": "one"}},
            ),
            Case("payload misses required", "POST", f"{path}/trigger", 400, "payload validation failed", json={}),
            Case("bulk with 0 items", "POST", f"{path}/trigger/bulk", 400, json={"items": []}),
            Case(
                "bulk with 501 items",
                "POST",
                f"{path}/trigger/bulk",
                400,
                json={"items": [{"payload": {"n": i}} for i in range(501)]},
            ),
            Case(
                "bulk with a bad item",
                "POST",
                f"{path}/trigger/bulk",
                400,
                json={"items": [{"payload": {"n": 1}}, {"payload": {"n": "x"}}]},
            ),
            Case(
                "bulk item in the past",
                "POST",
                f"{path}/trigger/bulk",
                400,
                json={"items": [{"payload": {"n": 1}}, {"payload": {"n": 2}, "scheduled_at": past}]},
            ),
            Case("disabled job", "POST", f"/v1/jobs/{f['disabled']}/trigger", 400, "job is disabled", json={}),
            Case("cancel a terminal run", "DELETE", f"/v1/runs/{f['run']}", 400, "terminal"),
            Case("replay a canceled run", "POST", f"/v1/runs/{f['run']}/replay", 400, "not replayable"),
            Case("dlq-replay of a canceled run", "POST", f"/v1/runs/{f['run']}/dlq-replay", 409),
            Case(
                "trigger with text/plain",
                "POST",
                f"{path}/trigger",
                415,
                content=b"{}",
                headers={"Content-Type": "text/plain"},
            ),
        ],
    )
    with strait.client() as c:  # project context from the query string this time
        runs = c.get("/v1/runs?project_id=p1").json()["data"]
        assert [r["id"] for r in runs] == [f["run"]], "no failed trigger left a run behind"
        assert c.get("/v1/runs/dlq?project_id=p1").json() == {"data": [], "has_more": False}
    with strait.client("p1") as c:
        assert c.get(f"/v1/runs?job_id={job}").json()["data"] == runs
        assert c.get(f"/v1/runs?job_id={f['disabled']}").json()["data"] == []
    no_traceback(strait)
