"""The OpenAPI 3.1 document, served at `GET /openapi.json` (no auth: it holds no secret, and a
client needs it before it has a key).

Generated from the live router: every route `create_app` registers is walked, its path parameters
read from the route itself, and described by its entry in OPERATIONS (summary, query, body, answers);
HEAD routes are documented from their GET. A route without an entry is left out of the document,
and tests/test_openapi.py fails until it has one. Request bodies come from the validators' tables
(`validation.job_body_schema`, `trigger_body_schema`), the run list's filters from the table its
handler reads (`run_filters.RUN_FILTERS`), and the constants the handlers check (openapi_schemas.py).
Built once per application, when `create_app` has added every route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from strait_actors import __version__, payloads
from strait_actors.api import events, openapi_schemas, run_filters
from strait_actors.api.openapi_schemas import INT, STR, Schema, obj, ref
from strait_actors.api.state import SETTINGS

routes = web.RouteTableDef()
DOCUMENT: web.AppKey[bytes] = web.AppKey("openapi_document", bytes)
PATH = "/openapi.json"


@dataclass(frozen=True)
class Op:
    """What a route does, for the document: the route table says where it is, this what it is."""

    summary: str
    tag: str
    ok: dict[int, Schema | None]  # success status -> body schema (None: no body)
    body: str | None = None  # a name in openapi_schemas.BODIES
    body_required: bool = False
    query: tuple[tuple[str, Schema], ...] = ()
    headers: tuple[tuple[str, Schema], ...] = ()
    errors: frozenset[int] = frozenset()  # besides those every operation of its plane can answer
    required_query: frozenset[str] = frozenset()
    media: str = "application/json"  # of the success body


def _q(**params: Schema) -> tuple[tuple[str, Schema], ...]:
    return tuple(params.items())


def _codes(*codes: int) -> frozenset[int]:
    return frozenset(codes)


_PAGE = _q(limit={"type": "integer", "minimum": 1}, cursor=STR)
_TAGS = _q(tag_key=STR, tag_value=STR)
_IDEMPOTENCY = _q(
    **{
        "Idempotency-Key": {"type": "string", "maxLength": 256},
        "X-Idempotency-Key": {"type": "string", "maxLength": 256},
    }
)
_RUN_FILTERS = run_filters.query_schemas()
_NF, _CONFLICT, _UNPROC, _LIMITED = 404, 409, 422, 429


def _ok(name: str, status: int = 200) -> dict[int, Schema | None]:
    return {status: ref(name)}


def _jobs() -> dict[tuple[str, str], Op]:
    j = "/v1/jobs/{job_id}"
    w = _codes(_NF, _CONFLICT, _UNPROC)
    return {
        ("POST", "/v1/jobs"): Op("Create a job", "jobs", _ok("Job", 201), "JobCreate", True, errors=w),
        ("GET", "/v1/jobs"): Op(
            "List the project's jobs", "jobs", _ok("JobPage"), query=(*_PAGE, ("slug", STR), *_TAGS)
        ),
        ("GET", j): Op("Get a job", "jobs", _ok("Job")),
        ("PATCH", j): Op("Update a job (a new version)", "jobs", _ok("Job"), "JobPatch", errors=w),
        ("POST", f"{j}/pause"): Op("Pause a job", "jobs", _ok("Job"), "Pause"),
        ("POST", f"{j}/resume"): Op("Resume a job", "jobs", _ok("Job"), "Empty"),
        ("DELETE", j): Op("Delete a job", "jobs", {204: None}, errors=_codes(_CONFLICT)),
        ("GET", f"{j}/versions"): Op("List a job's versions", "jobs", _ok("JobVersionPage"), query=_PAGE),
        ("GET", f"{j}/versions/{{version_id}}"): Op("Get a job version", "jobs", _ok("JobVersion")),
        ("GET", f"{j}/dependencies"): Op("List a job's dependencies", "jobs", _ok("DependencyPage")),
        ("POST", f"{j}/dependencies"): Op(
            "Add a dependency", "jobs", _ok("Dependency", 201), "DependencyCreate", True, errors=w
        ),
        ("DELETE", f"{j}/dependencies/{{dep_id}}"): Op("Remove a dependency", "jobs", {204: None}),
        ("POST", f"{j}/trigger"): Op(
            "Trigger a run",
            "runs",
            {201: ref("TriggerReceipt"), 200: {"anyOf": [ref("IdempotencyHit"), ref("DryRun")]}},
            "Trigger",
            headers=(*_IDEMPOTENCY, ("Traceparent", STR), ("Tracestate", STR)),
            errors=_codes(_CONFLICT, _UNPROC, _LIMITED),
        ),
        ("POST", f"{j}/trigger/bulk"): Op(
            "Trigger many runs",
            "runs",
            _ok("BulkReceipt", 201),
            "BulkTrigger",
            True,
            headers=(("Traceparent", STR), ("Tracestate", STR)),
            errors=_codes(_CONFLICT, _UNPROC, _LIMITED),
        ),
    }


def _runs() -> dict[tuple[str, str], Op]:
    r = "/v1/runs/{run_id}"
    return {
        ("GET", "/v1/runs"): Op("List the project's runs", "runs", _ok("RunPage"), query=(*_PAGE, *_RUN_FILTERS)),
        ("GET", "/v1/runs/dlq"): Op("List the dead-lettered runs", "runs", _ok("RunPage"), query=_PAGE),
        ("POST", "/v1/runs/bulk-dlq-replay"): Op(
            "Replay dead-lettered runs",
            "runs",
            {200: obj({"replayed": {"type": "array", "items": STR}, "count": INT})},
            "BulkDlqReplay",
            True,
            errors=_codes(_NF),
        ),
        ("GET", r): Op("Get a run", "runs", _ok("Run")),
        ("GET", f"{r}/debug-bundle"): Op(
            "A run's whole story in one document: the run, its job version, attempts, events, checkpoints, "
            "outputs, usage, tool calls and waits (each list bounded)",
            "runs",
            {200: {"type": "object", "required": ["run"], "properties": {"run": {"type": "object"}}}},
        ),
        ("GET", f"{r}/dependency-status"): Op("A run's dependencies", "runs", _ok("DependencyStatus")),
        ("GET", f"{r}/dependencies"): Op("A run's dependencies (the client's path)", "runs", _ok("DependencyStatus")),
        ("DELETE", r): Op("Cancel a run", "runs", _ok("Run"), errors=_codes(_CONFLICT)),
        ("POST", f"{r}/replay"): Op(
            "Replay a run as a new run", "runs", _ok("Run", 201), query=_q(from_checkpoint=STR)
        ),
        ("POST", f"{r}/dlq-replay"): Op("Requeue a dead-lettered run", "runs", _ok("Run"), errors=_codes(_CONFLICT)),
        ("GET", f"{r}/events"): Op(
            "A run's events", "runs", _ok("RunEventPage"), query=(*_PAGE, ("level", STR), ("type", STR))
        ),
        ("GET", f"{r}/checkpoints"): Op("A run's checkpoints", "runs", _ok("CheckpointPage"), query=_PAGE),
        ("GET", f"{r}/outputs"): Op("A run's outputs", "runs", _ok("OutputPage"), query=_PAGE),
        ("GET", f"{r}/usage"): Op("A run's usage", "runs", _ok("UsagePage"), query=_PAGE),
        ("GET", f"{r}/tool-calls"): Op("A run's tool calls", "runs", _ok("ToolCallPage"), query=_PAGE),
        ("GET", f"{r}/children"): Op("A run's spawned children", "runs", _ok("RunPage"), query=_PAGE),
        ("GET", f"{r}/lineage"): Op("A run's continue-as-new chain", "runs", _ok("Lineage")),
        ("GET", f"{r}/stream"): Op(
            "Live events of a run (SSE)",
            "runs",
            {200: STR},
            headers=_q(**{"Last-Event-ID": STR}),
            errors=_codes(410),
            media="text/event-stream",
        ),
    }


def _tenancy() -> dict[tuple[str, str], Op]:
    p, e, g = "/v1/projects/{project_id}", "/v1/environments/{env_id}", "/v1/job-groups/{group_id}"
    named = _codes(_NF, _CONFLICT, _UNPROC)
    return {
        ("POST", "/v1/projects"): Op(
            "Create or rename a project",
            "projects",
            _ok("Project", 201),
            "ProjectCreate",
            True,
            errors=_codes(_CONFLICT, _UNPROC),
        ),
        ("GET", "/v1/projects"): Op(
            "List an org's projects",
            "projects",
            {200: {"type": "array", "items": ref("Project")}},
            query=_q(org_id=STR),
            required_query=frozenset({"org_id"}),
        ),
        ("GET", p): Op("Get a project", "projects", _ok("Project")),
        ("GET", f"{p}/quotas"): Op("A project's quotas", "projects", _ok("Quotas")),
        ("PUT", f"{p}/quotas"): Op(
            "Set a project's quotas", "projects", _ok("Quotas"), "QuotasPut", errors=_codes(_UNPROC)
        ),
        ("POST", f"{p}/pause"): Op("Pause a project", "projects", _ok("Project"), "Pause"),
        ("POST", f"{p}/resume"): Op("Resume a project", "projects", _ok("Project"), "Empty"),
        ("POST", "/v1/api-keys"): Op(
            "Create an API key", "projects", _ok("ApiKey", 201), "ApiKeyCreate", True, errors=_codes(_NF, _UNPROC)
        ),
        ("GET", "/v1/api-keys"): Op("List the project's API keys", "projects", _ok("ApiKeyPage"), query=_PAGE),
        ("DELETE", "/v1/api-keys/{key_id}"): Op("Revoke an API key", "projects", _ok("ApiKey")),
        ("POST", "/v1/environments"): Op(
            "Create an environment", "environments", _ok("Environment", 201), "EnvironmentCreate", True, errors=named
        ),
        ("GET", "/v1/environments"): Op("List environments", "environments", _ok("EnvironmentPage"), query=_PAGE),
        ("GET", e): Op("Get an environment", "environments", _ok("Environment")),
        ("PATCH", e): Op("Update an environment", "environments", _ok("Environment"), "EnvironmentPatch", errors=named),
        ("DELETE", e): Op("Delete an environment", "environments", {204: None}, errors=_codes(_CONFLICT)),
        ("GET", f"{e}/variables"): Op(
            "An environment's variables",
            "environments",
            {200: obj({"environment_id": STR, "variables": openapi_schemas.MAP})},
        ),
        ("POST", "/v1/job-groups"): Op(
            "Create a job group", "job-groups", _ok("JobGroup", 201), "JobGroupCreate", True, errors=named
        ),
        ("GET", "/v1/job-groups"): Op("List job groups", "job-groups", _ok("JobGroupPage"), query=_PAGE),
        ("GET", g): Op("Get a job group", "job-groups", _ok("JobGroup")),
        ("PATCH", g): Op("Update a job group", "job-groups", _ok("JobGroup"), "JobGroupPatch", errors=named),
        ("DELETE", g): Op("Delete a job group", "job-groups", {204: None}),
        ("GET", f"{g}/jobs"): Op("A group's jobs", "job-groups", _ok("JobPage"), query=_PAGE),
        ("POST", f"{g}/pause-all"): Op("Pause a group's jobs", "job-groups", {200: _GROUP_PAUSE}, "Pause"),
        ("POST", f"{g}/resume-all"): Op("Resume a group's jobs", "job-groups", {200: _GROUP_PAUSE}, "Empty"),
        ("GET", f"{g}/stats"): Op(
            "A group's counts",
            "job-groups",
            {
                200: obj(
                    {
                        "group_id": STR,
                        "job_count": INT,
                        "paused_job_count": INT,
                        "run_count": INT,
                        "runs_by_status": {"type": "object", "additionalProperties": INT},
                    }
                )
            },
        ),
    }


_GROUP_PAUSE: Final = obj({"group_id": STR, "paused": openapi_schemas.BOOL, "updated": INT})


def _events() -> dict[tuple[str, str], Op]:
    k = "/v1/events/{event_key}"
    return {
        ("POST", f"{k}/send"): Op(
            "Send an event to what waits on its key",
            "events",
            _ok("EventTrigger"),
            "EventSend",
            errors=_codes(_CONFLICT),
        ),
        ("GET", "/v1/events"): Op(
            "List event triggers",
            "events",
            _ok("EventTriggerPage"),
            query=(
                *_PAGE,
                ("status", {"type": "string", "enum": sorted(events.STATUSES)}),
                ("source_type", {"type": "string", "enum": sorted(events.SOURCES)}),
                ("workflow_run_id", STR),
            ),
        ),
        ("GET", k): Op("Get an event trigger", "events", _ok("EventTrigger")),
        ("DELETE", k): Op("Cancel an event trigger", "events", _ok("EventTrigger"), errors=_codes(_CONFLICT)),
    }


def _sdk() -> dict[tuple[str, str], Op]:
    s = "/sdk/v1/runs/{run_id}"
    limited = _codes(_LIMITED)
    return {
        ("POST", f"{s}/heartbeat"): Op("Heartbeat", "sdk", {200: obj({"status": {"const": "ok"}})}, "SdkEmpty"),
        ("POST", f"{s}/log"): Op("Log an event", "sdk", _ok("RunEvent", 201), "SdkLog", True),
        ("POST", f"{s}/progress"): Op("Report progress", "sdk", _ok("RunEvent", 201), "SdkProgress", True),
        ("POST", f"{s}/complete"): Op("Complete the run", "sdk", _ok("Run"), "SdkComplete"),
        ("POST", f"{s}/fail"): Op("Fail the run (no retry)", "sdk", _ok("Run"), "SdkFail", True),
        ("POST", f"{s}/checkpoint"): Op("Save a checkpoint", "sdk", _ok("Checkpoint", 201), "SdkCheckpoint", True),
        ("POST", f"{s}/output"): Op("Save an output", "sdk", _ok("Output", 201), "SdkOutput", True),
        ("POST", f"{s}/state"): Op("Set a state key", "sdk", _ok("State", 201), "SdkState", True),
        ("GET", f"{s}/state"): Op("The run's state keys", "sdk", {200: {"type": "array", "items": ref("State")}}),
        ("GET", f"{s}/state/{{key}}"): Op("Get a state key", "sdk", _ok("State")),
        ("DELETE", f"{s}/state/{{key}}"): Op("Delete a state key", "sdk", {204: None}),
        ("GET", f"{s}/payload"): Op("The run's payload, verbatim", "sdk", {200: openapi_schemas.ANY}),
        ("POST", f"{s}/annotate"): Op("Annotate the run's metadata", "sdk", _ok("Run"), "SdkAnnotate", True),
        ("POST", f"{s}/usage"): Op("Record usage", "sdk", _ok("Usage", 201), "SdkUsage", True, errors=limited),
        ("POST", f"{s}/tool-call"): Op("Record a tool call", "sdk", _ok("ToolCall", 201), "SdkToolCall", True),
        ("POST", f"{s}/wait-for-event"): Op(
            "Park the run on an event", "sdk", _ok("Waiting"), "SdkWait", True, errors=limited
        ),
        ("POST", f"{s}/spawn"): Op(
            "Spawn a child run", "sdk", _ok("SpawnReceipt", 201), "SdkSpawn", True, errors=limited
        ),
        ("POST", f"{s}/continue"): Op("Continue as a new run", "sdk", _ok("Run", 201), "SdkContinue", errors=limited),
    }


OPERATIONS: Final[dict[tuple[str, str], Op]] = {
    ("GET", "/health"): Op("Liveness", "health", _ok("Health")),
    ("GET", "/health/ready"): Op("Readiness (the database answers)", "health", {200: ref("Ready"), 503: ref("Ready")}),
    ("GET", PATH): Op("This document", "health", {200: {"type": "object"}}),
    ("GET", "/metrics"): Op(
        "Prometheus metrics of every process (the internal secret; Accept: application/json gets them wrapped)",
        "health",
        {200: {"type": "string"}},
        errors=_codes(401),
        media="text/plain",
    ),
    **_jobs(),
    **_runs(),
    **_tenancy(),
    **_events(),
    **_sdk(),
}

# What every operation of a plane can answer, besides its own: /v1 checks the media types (406,
# 415), the caller (401, 403), the rate limit (429) and REQUEST_TIMEOUT (503); a bad query, header
# or body is a 400, a body over the limit a 413.
_V1_ERRORS: Final = _codes(400, 401, 403, 406, 429, 503)
_SDK_ERRORS: Final = _codes(400, 401, 403, 404, 409, 410, 413, 422, 503)
_BODY_ERRORS: Final = _codes(413, 415)
_SECURITY: Final[dict[str, list[dict[str, list[str]]]]] = {
    "/v1/": [{"bearer": []}, {"internalSecret": []}],
    "/sdk/": [{"runToken": []}],
    "/metrics": [{"bearer": []}, {"internalSecret": []}],
}
_SCHEMES: Final = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`strait_` + 64 hex) or the internal secret. An internal caller names its "
        "project with `X-Project-Id` (or `?project_id=`) and itself with `X-Actor-Id` (api.md §1.3).",
    },
    "internalSecret": {"type": "apiKey", "in": "header", "name": "X-Internal-Secret"},
    "runToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The run token "
        "a dispatch carries in X-Run-Token (api.md §1.5); only for its own run's SDK calls.",
    },
}
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def _errors(method: str, path: str, op: Op) -> frozenset[int]:
    if path.startswith("/sdk/"):
        return _SDK_ERRORS | op.errors
    if not path.startswith("/v1/"):
        return op.errors
    out = _V1_ERRORS | op.errors
    if "{" in path:
        out |= {404}
    if method in ("POST", "PUT", "PATCH"):
        out |= _BODY_ERRORS | {422}
    return out


def _responses(method: str, path: str, op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, schema in sorted(op.ok.items()):
        response: dict[str, Any] = {"description": "success" if status < 300 else "unavailable"}
        if schema is not None and method != "HEAD":
            response["content"] = {op.media: {"schema": schema}}
        out[str(status)] = response
    for status in sorted(_errors(method, path, op) - op.ok.keys()):
        error: dict[str, Any] = {"description": "the contract's error envelope (api.md §2.3)"}
        if method != "HEAD":
            error["content"] = {"application/json": {"schema": ref("Error")}}
        out[str(status)] = error
    return out


def _parameters(canonical: str, op: Op) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _PARAM.findall(canonical)
    ]
    for name, schema in op.query:
        param = {"name": name, "in": "query", "required": name in op.required_query, "schema": schema}
        if schema.get("type") == "array":
            param.update(style="form", explode=True)
        params.append(param)
    params += [{"name": name, "in": "header", "required": False, "schema": s} for name, s in op.headers]
    return params


def _operation(method: str, canonical: str, op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": f"{method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', canonical).rstrip('_')}",
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": _parameters(canonical, op),
        "responses": _responses(method, canonical, op),
    }
    security = next((s for prefix, s in _SECURITY.items() if canonical.startswith(prefix)), [])
    out["security"] = security
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.body}"}}},
        }
    return out


def build(app: web.Application) -> dict[str, Any]:
    """The document for `app`'s router: one operation per route that has an entry in OPERATIONS."""
    settings = app[SETTINGS]
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or ""
        method = route.method
        op = OPERATIONS.get(("GET" if method == "HEAD" else method, template))
        if op is None:
            continue
        paths.setdefault(template, {})[method.lower()] = _operation(method, template, op)
    bodies = dict(openapi_schemas.BODIES)
    bodies["BulkTrigger"] = obj(
        {
            "items": {
                "type": "array",
                "items": ref("Trigger"),
                "minItems": 1,
                "maxItems": settings.max_bulk_trigger_items,
            }
        }
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "strait",
            "version": __version__,
            "description": "The strait HTTP API (api.md). Generated from the server's router: see README.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {"schemas": {**openapi_schemas.RESPONSES, **bodies}, "securitySchemes": _SCHEMES},
    }


def attach(app: web.Application) -> None:
    """Build the document once, after every route is added (create_app's last step)."""
    app.add_routes(routes)
    app[DOCUMENT] = payloads.dumps(build(app))


@routes.get(PATH)
async def document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")
