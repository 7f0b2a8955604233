"""Projects and API keys: the bootstrap a client needs to get a key (api.md §4.2)."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from strait_actors import ids
from strait_actors.api import render
from strait_actors.api.auth import caller, project_scope, require
from strait_actors.api.http import json_response, read_object
from strait_actors.api.pagination import page_of, respond
from strait_actors.api.state import BUDGETS, JOBS, KEYS, POOL
from strait_actors.api.validation import pause_reason, storable
from strait_actors.errors import bad_request, conflict, forbidden, not_found, unprocessable
from strait_actors.payloads import clean_str
from strait_actors.store import projects as store
from strait_actors.store.errors import MissingReference, Rejected

routes = web.RouteTableDef()

SCOPES = frozenset(
    {
        "*",
        "jobs:read",
        "jobs:write",
        "jobs:trigger",
        "runs:read",
        "runs:write",
        "workflows:read",
        "workflows:write",
        "workflows:trigger",
        "secrets:read",
        "secrets:write",
        "webhooks:read",
        "webhooks:write",
        "api-keys:manage",
        "rbac:manage",
        "stats:read",
        "projects:read",
        "projects:write",
        "projects:manage",
        "workers:connect",
        "dlq:*",
        "outbox:*",
    }
)


def _required_str(body: dict[str, Any], name: str, max_len: int = 255, min_len: int = 1) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise unprocessable("validation failed", [f"{name}: failed on 'required'"])
    value = clean_str(value).strip()  # NULs stripped, lone surrogates replaced: PostgreSQL text holds neither
    if len(value) > max_len:
        raise unprocessable("validation failed", [f"{name}: failed on 'max'"])
    if len(value) < min_len:
        raise unprocessable("validation failed", [f"{name}: failed on 'min'"])
    return value


@routes.post("/v1/projects")
async def create_project(request: web.Request) -> web.Response:
    if not caller(request).internal:
        raise forbidden("project creation requires internal secret")
    body = await read_object(request)
    pid, org = _required_str(body, "id"), _required_str(body, "org_id")
    name = _required_str(body, "name", min_len=2)
    row = await store.upsert_project(request.app[POOL], pid, org, name)
    if row is None:
        raise conflict(f"project {pid!r} exists in another org")
    return json_response(render.project(row), 201)


@routes.get("/v1/projects")
async def list_projects(request: web.Request) -> web.Response:
    if not caller(request).internal:
        raise forbidden("listing projects requires internal secret")
    org = request.query.get("org_id")
    if not org:
        raise bad_request("org_id is required")
    return json_response([render.project(r) for r in await store.list_projects(request.app[POOL], org)])


@routes.get("/v1/projects/{project_id}")
async def get_project(request: web.Request) -> web.Response:
    who = require(request, "projects:read")
    pid = request.match_info["project_id"]
    if not who.internal and who.project_id != pid:
        raise forbidden("access denied")
    row = await store.get_project(request.app[POOL], pid)
    if row is None:
        raise not_found("project not found")
    return json_response(render.project(row))


def _scopes(body: dict[str, Any]) -> list[str]:
    scopes = body.get("scopes")
    if scopes is None:
        raise unprocessable("validation failed", ["scopes: failed on 'required'"])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise unprocessable("validation failed", ["scopes: failed on 'type'"])
    if not scopes:
        raise bad_request("scopes must contain at least one explicit permission")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise bad_request(f"invalid scope: {clean_str(unknown[0])}")  # the message is JSON: no lone surrogate
    return sorted(set(scopes))


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256 or "\x00" in value:
        raise unprocessable("validation failed", [f"{name}: failed on 'type'"])
    return clean_str(value) or None  # a lone surrogate becomes U+FFFD (§0.3), as in every other field


def _expiry(body: dict[str, Any]) -> datetime | None:
    days = body.get("expires_in_days")
    if days is None:
        return None
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
        raise unprocessable("validation failed", ["expires_in_days: failed on 'max'"])
    return datetime.now(UTC) + timedelta(days=days)


@routes.post("/v1/api-keys")
async def create_api_key(request: web.Request) -> web.Response:
    who = require(request, "api-keys:manage")
    body = await read_object(request)
    pid, name = _required_str(body, "project_id"), _required_str(body, "name")
    scopes = _scopes(body)
    if who.project_id and who.project_id != pid:
        raise forbidden("project_id does not match authenticated project")
    if not who.internal and who.scopes and "*" not in who.scopes and not set(scopes) <= who.scopes:
        raise forbidden("cannot grant scopes the caller does not hold")
    raw = ids.api_key()
    values = {
        "id": ids.uuid7(),
        "project_id": pid,
        "org_id": _optional_str(body, "org_id"),
        "name": name,
        "key_hash": ids.hash_key(raw),
        "key_prefix": raw[:12],
        "scopes": scopes,
        "environment_id": _optional_str(body, "environment_id"),
        "expires_at": _expiry(body),
    }
    try:
        row = await store.insert_api_key(request.app[POOL], values)
    except MissingReference:
        raise not_found("project not found") from None
    return json_response(render.api_key(row, raw), 201)


@routes.get("/v1/api-keys")
async def list_api_keys(request: web.Request) -> web.Response:
    require(request, "api-keys:manage")
    project = project_scope(request)
    page = page_of(request)
    rows = await store.list_api_keys(request.app[POOL], project, page.limit + 1, page.after_ts, page.after_id)
    return json_response(respond(rows, page, render.api_key))


@routes.delete("/v1/api-keys/{key_id}")
async def revoke_api_key(request: web.Request) -> web.Response:
    who = require(request, "api-keys:manage")
    key_id = ids.parse_uuid(request.match_info["key_id"])
    row = await store.revoke_api_key(request.app[POOL], key_id, who.project_id) if key_id else None
    if row is None:
        raise not_found("api key not found")
    request.app[KEYS].forget()
    return json_response(render.api_key(row))


# ----------------------------------------------------------------- quotas (engine.md §9.1) [EXTRA]

_QUOTA_INTS = (
    "max_daily_cost_microusd",
    "max_cost_per_run_microusd",
    "max_active_event_triggers",
    "max_queued_runs",
    "max_executing_runs",
)
_QUOTA_CAPS = {"max_active_event_triggers": 2**31 - 1, "max_queued_runs": 2**31 - 1, "max_executing_runs": 2**31 - 1}


def _quota_row(row: dict[str, Any] | None, pid: str) -> dict[str, Any]:
    out: dict[str, Any] = {"project_id": pid, "timezone": "UTC"}
    for name in _QUOTA_INTS:
        out[name] = row[name] if row is not None else None
    if row is not None:
        out["timezone"] = row["timezone"]
        out["updated_at"] = render.ts(row["updated_at"])
    return out


@routes.get("/v1/projects/{project_id}/quotas")
async def get_quotas(request: web.Request) -> web.Response:
    who = require(request, "projects:read")
    pid = request.match_info["project_id"]
    if not who.internal and who.project_id != pid:
        raise forbidden("access denied")
    return json_response(_quota_row(await request.app[BUDGETS].get(pid), pid))


@routes.put("/v1/projects/{project_id}/quotas")
async def put_quotas(request: web.Request) -> web.Response:
    """The project's limits, all at once (a field left out or null has none). Budgets are the
    operator's: the internal secret only."""
    if not caller(request).internal:
        raise forbidden("setting quotas requires internal secret")
    pid = request.match_info["project_id"]
    body = await read_object(request)
    unknown = sorted(set(body) - {*_QUOTA_INTS, "timezone"})
    if unknown:
        raise bad_request(f"unknown field {clean_str(unknown[0])!r}")
    values: dict[str, Any] = {}
    for name in _QUOTA_INTS:
        raw = body.get(name)
        if raw is not None and (
            isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= _QUOTA_CAPS.get(name, 2**63 - 1)
        ):
            raise unprocessable("validation failed", [f"{name}: failed on 'min=0'"])
        values[name] = raw
    tz = body.get("timezone") or "UTC"
    if not isinstance(tz, str):
        raise unprocessable("validation failed", ["timezone: failed on 'string'"])
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise bad_request(f"timezone {clean_str(tz)!r} is not a known time zone") from None
    values["timezone"] = tz
    if await store.get_project(request.app[POOL], pid) is None:
        raise not_found("project not found")
    try:
        row = await request.app[BUDGETS].put(pid, values)
    except MissingReference:
        raise not_found("project not found") from None
    except Rejected:  # the only value PostgreSQL can still refuse: a zone name it does not know
        raise bad_request(f"timezone {clean_str(tz)!r} is not a known time zone") from None
    return json_response(_quota_row(row, pid))


# ----------------------------------------------------------------- project pause (migration 0007) [EXTRA]


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    """While a project is paused its jobs take no triggers (409), fire no cron ticks, and their
    queued runs are set aside, not dispatched; a resume puts them back. An operator's act, like
    quotas: the internal secret only."""
    if not caller(request).internal:
        raise forbidden("pausing a project requires internal secret")
    pid = request.match_info["project_id"]
    body = await read_object(request)
    reason = pause_reason(body) if paused else None
    row = await store.set_paused(request.app[POOL], pid, paused, reason) if storable(pid) else None
    if row is None:
        raise not_found("project not found")
    request.app[JOBS].forget_all()  # every job of the project changed (project_paused)
    return json_response(render.project(row))


@routes.post("/v1/projects/{project_id}/pause")
async def pause_project(request: web.Request) -> web.Response:
    """Optional `{"reason": str}` (≤ 1000); pausing a paused project keeps its first paused_at."""
    return await _set_paused(request, True)


@routes.post("/v1/projects/{project_id}/resume")
async def resume_project(request: web.Request) -> web.Response:
    return await _set_paused(request, False)
