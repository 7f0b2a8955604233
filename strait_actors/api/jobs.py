"""Jobs: create, list, get, update (versions), delete (api.md §4.3.1-4.3.5, 4.3.9)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from aiohttp import web

from strait_actors import ssrf
from strait_actors.api import render
from strait_actors.api.auth import caller, check_project, project_scope, require
from strait_actors.api.http import json_response, no_content, read_object
from strait_actors.api.pagination import page_of, respond
from strait_actors.api.state import JOBS, POOL, SETTINGS
from strait_actors.api.validation import (
    JobDefaults,
    check_job_invariants,
    pause_reason,
    validate_job_create,
    validate_job_patch,
)
from strait_actors.errors import bad_request, conflict, forbidden, not_found, unprocessable
from strait_actors.ids import parse_uuid
from strait_actors.payloads import clean_str
from strait_actors.store import dependencies as deps_store
from strait_actors.store import jobs as store
from strait_actors.store.errors import MissingReference
from strait_actors.store.sql import Row

routes = web.RouteTableDef()

# a job's environment_id / group_id must name one of its project's (another project's is not found)
ENVIRONMENT_NOT_FOUND = "environment not found: environment_id must name an environment of the job's project"
GROUP_NOT_FOUND = "job group not found: group_id must name a job group of the job's project"


def url_check(request: web.Request) -> Any:
    s = request.app[SETTINGS]
    return functools.partial(
        ssrf.check_url, allow_private=s.allow_private_endpoints, require_tls=s.endpoint_require_tls
    )


async def resolve_off_loop(func: Any, *args: Any, **kwargs: Any) -> Any:
    """URL checks resolve DNS (blocking): keep them off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args, **kwargs))


async def load_job(request: web.Request, *, cached: bool = False) -> Row:
    """The job named by the path, visible to the caller, or 404."""
    job_id = parse_uuid(request.match_info["job_id"])
    if job_id is None:
        raise not_found("job not found")
    pool = request.app[POOL]
    row = await (request.app[JOBS].get(pool, job_id) if cached else store.get_job(pool, job_id))
    if row is None:
        raise not_found("job not found")
    check_project(request, row["project_id"], "job")
    return row


def _check_create_project(request: web.Request, body: dict[str, Any]) -> None:
    """A key (or X-Project-Id) bound to one project cannot create jobs in another."""
    who = caller(request)
    pid = body.get("project_id")
    if isinstance(pid, str) and pid and who.project_id and pid != who.project_id:
        raise forbidden("project_id does not match authenticated project")


@routes.post("/v1/jobs")
async def create_job(request: web.Request) -> web.Response:
    who = require(request, "jobs:write")
    body = await read_object(request)
    s = request.app[SETTINGS]
    _check_create_project(request, body)
    values = await resolve_off_loop(
        validate_job_create,
        body,
        defaults=JobDefaults(s.default_job_max_attempts, s.default_job_timeout_secs),
        url_check=url_check(request),
    )
    try:
        row = await store.insert_job(request.app[POOL], values["project_id"], values, who.actor)
    except store.SlugTaken:
        raise conflict(f"job with slug {values['slug']!r} already exists in this project") from None
    except MissingReference:
        raise not_found("project not found") from None
    except store.MissingEnvironment:
        raise bad_request(ENVIRONMENT_NOT_FOUND) from None
    except store.MissingGroup:
        raise bad_request(GROUP_NOT_FOUND) from None
    return json_response(render.job(row), 201)


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    project = project_scope(request)
    page = page_of(request)
    tag_key, tag_value = request.query.get("tag_key"), request.query.get("tag_value")
    if tag_value is not None and tag_key is None:
        raise bad_request("tag_value requires tag_key")
    rows = await store.list_jobs(
        request.app[POOL],
        project,
        slug=request.query.get("slug"),
        tag_key=tag_key,
        tag_value=tag_value,
        limit=page.limit + 1,
        after_ts=page.after_ts,
        after_id=page.after_id,
    )
    return json_response(respond(rows, page, render.job))


@routes.get("/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    return json_response(render.job(await load_job(request)))


@routes.patch("/v1/jobs/{job_id}")
async def update_job(request: web.Request) -> web.Response:
    who = require(request, "jobs:write")
    current = await load_job(request)
    body = await read_object(request)
    changes = await resolve_off_loop(validate_job_patch, body, url_check=url_check(request))
    merged = {**current, **changes}
    if "signing_secret" not in changes:
        merged["signing_secret"] = current["signing_secret"]
    check_job_invariants(merged)
    try:
        row = await store.update_job(request.app[POOL], current, changes, who.actor, render.job(current))
    except store.SlugTaken:
        raise conflict(f"job with slug {merged['slug']!r} already exists in this project") from None
    except store.VersionConflict:
        raise conflict("job was modified concurrently; retry") from None
    except store.MissingEnvironment:
        raise bad_request(ENVIRONMENT_NOT_FOUND) from None
    except store.MissingGroup:
        raise bad_request(GROUP_NOT_FOUND) from None
    request.app[JOBS].forget(current["id"])
    return json_response(render.job(row))


@routes.post("/v1/jobs/{job_id}/pause")
async def pause_job(request: web.Request) -> web.Response:
    """api.md §4.3.10: optional `{"reason": str}`; pausing a paused job keeps its first paused_at."""
    require(request, "jobs:write")
    current = await load_job(request)
    reason = pause_reason(await read_object(request))
    return await _set_paused(request, current, True, reason)


@routes.post("/v1/jobs/{job_id}/resume")
async def resume_job(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    current = await load_job(request)
    await read_object(request)
    return await _set_paused(request, current, False, None)


async def _set_paused(request: web.Request, current: Row, paused: bool, reason: str | None) -> web.Response:
    row = await store.set_paused(request.app[POOL], current["id"], paused, reason)
    if row is None:
        raise not_found("job not found")
    request.app[JOBS].forget(current["id"])
    return json_response(render.job(row))


@routes.delete("/v1/jobs/{job_id}")
async def delete_job(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    job = await load_job(request)
    if not await store.delete_job(request.app[POOL], job["id"]):
        raise conflict("job has active runs — cancel them first or wait for completion")
    request.app[JOBS].forget(job["id"])
    return no_content()


@routes.get("/v1/jobs/{job_id}/versions")
async def list_versions(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    job = await load_job(request)
    page = page_of(request, id_kind="str")
    after_version = None
    if request.query.get("cursor"):
        try:
            after_version = int(request.query["cursor"].rpartition("|")[2])
        except ValueError:
            raise bad_request("invalid cursor format") from None
    rows = await store.list_versions(request.app[POOL], job["id"], page.limit + 1, after_version)
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    body: dict[str, Any] = {"data": [render.job_version(r) for r in rows], "has_more": has_more}
    if has_more:
        body["next_cursor"] = f"{render.ts(rows[-1]['created_at'])}|{rows[-1]['version']}"
    return json_response(body)


@routes.get("/v1/jobs/{job_id}/versions/{version_id}")
async def get_version(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    job = await load_job(request)
    row = await store.get_version(request.app[POOL], job["id"], request.match_info["version_id"])
    if row is None:
        raise not_found("version not found")
    return json_response(render.job_version(row))


# ----------------------------------------------------------------- dependencies (engine.md §2.8) [EXTRA]

DEPENDENCY_CONDITIONS = ("completed", "failed", "any")


@routes.get("/v1/jobs/{job_id}/dependencies")
async def list_dependencies(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    job = await load_job(request)
    rows = await deps_store.list_of(request.app[POOL], job["id"])
    return json_response({"data": [render.dependency(r) for r in rows], "has_more": False})


@routes.post("/v1/jobs/{job_id}/dependencies")
async def create_dependency(request: web.Request) -> web.Response:
    """`{"depends_on_job_id", "condition"?: completed|failed|any}` (default completed): the job's
    triggered runs wait for the upstream job's latest ended run with the same key (README)."""
    require(request, "jobs:write")
    job = await load_job(request)
    body = await read_object(request)
    unknown = sorted(set(body) - {"depends_on_job_id", "condition"})
    if unknown:
        raise bad_request(f"unknown field {clean_str(unknown[0])!r}")
    raw, condition = body.get("depends_on_job_id"), body.get("condition", "completed")
    if not isinstance(raw, str) or not raw:
        raise unprocessable("validation failed", ["depends_on_job_id: failed on 'required'"])
    if not isinstance(condition, str) or condition not in DEPENDENCY_CONDITIONS:
        raise unprocessable("validation failed", ["condition: failed on 'oneof'"])
    upstream = parse_uuid(raw)
    if upstream is None:
        raise bad_request("depends_on_job_id must name a job of the same project")
    if upstream == job["id"]:
        raise bad_request("a job cannot depend on itself")
    try:
        row = await deps_store.add(request.app[POOL], job, upstream, condition)
    except deps_store.OtherProject:
        raise bad_request("depends_on_job_id must name a job of the same project") from None
    except deps_store.Cycle:
        raise bad_request("dependency would create a cycle") from None
    except deps_store.Exists:
        raise conflict("the job already depends on that job") from None
    except MissingReference:  # one of the jobs was deleted meanwhile
        raise not_found("job not found") from None
    request.app[JOBS].forget(job["id"])
    return json_response(render.dependency(row), 201)


@routes.delete("/v1/jobs/{job_id}/dependencies/{dep_id}")
async def delete_dependency(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    job = await load_job(request)
    dep_id = parse_uuid(request.match_info["dep_id"])
    if dep_id is None or not await deps_store.remove(request.app[POOL], job["id"], dep_id):
        raise not_found("dependency not found")
    request.app[JOBS].forget(job["id"])
    return no_content()
