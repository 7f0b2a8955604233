"""Job groups [EXTRA] (api.md §9 lists them; the routes are strait-python's `job_groups`): a
project's named sets of jobs (a job joins one by its `group_id`), listed, counted, paused and resumed
together. Deleting a group unbinds its jobs (group_id null) in the same transaction."""

from __future__ import annotations

from aiohttp import web

from strait_actors.api import render
from strait_actors.api.auth import check_project, project_scope, require
from strait_actors.api.environments import named_fields, target_project
from strait_actors.api.http import json_response, no_content, read_object
from strait_actors.api.pagination import page_of, respond
from strait_actors.api.state import JOBS, POOL
from strait_actors.api.validation import pause_reason
from strait_actors.errors import ApiError, conflict, not_found
from strait_actors.ids import parse_uuid
from strait_actors.store import groups as store
from strait_actors.store.errors import MissingReference
from strait_actors.store.sql import Row

routes = web.RouteTableDef()


async def _load(request: web.Request) -> Row:
    group_id = parse_uuid(request.match_info["group_id"])
    row = None if group_id is None else await store.get(request.app[POOL], group_id)
    if row is None:
        raise not_found("job group not found")
    check_project(request, row["project_id"], "job group")
    return row


def _taken(name: object) -> ApiError:
    return conflict(f"job group with name {name!r} already exists in this project")


@routes.post("/v1/job-groups")
async def create_group(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    body = await read_object(request)
    project = target_project(request, body)
    values = named_fields(body, patch=False)
    try:
        row = await store.insert(request.app[POOL], project, values)
    except store.NameTaken:
        raise _taken(values["name"]) from None
    except MissingReference:
        raise not_found("project not found") from None
    return json_response(render.job_group(row), 201)


@routes.get("/v1/job-groups")
async def list_groups(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    project = project_scope(request)
    page = page_of(request)
    rows = await store.list_page(request.app[POOL], project, page.limit + 1, page.after_ts, page.after_id)
    return json_response(respond(rows, page, render.job_group))


@routes.get("/v1/job-groups/{group_id}")
async def get_group(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    return json_response(render.job_group(await _load(request)))


@routes.patch("/v1/job-groups/{group_id}")
async def update_group(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    current = await _load(request)
    changes = named_fields(await read_object(request), patch=True)
    try:
        row = await store.update(request.app[POOL], current, changes)
    except store.NameTaken:
        raise _taken(changes.get("name")) from None
    if row is None:
        raise not_found("job group not found")
    return json_response(render.job_group(row))


@routes.delete("/v1/job-groups/{group_id}")
async def delete_group(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    current = await _load(request)
    if not await store.delete(request.app[POOL], current["id"]):
        raise not_found("job group not found")
    request.app[JOBS].forget_all()  # its jobs changed (group_id)
    return no_content()


@routes.get("/v1/job-groups/{group_id}/jobs")
async def list_group_jobs(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    group = await _load(request)
    page = page_of(request)
    rows = await store.list_jobs(request.app[POOL], group, page.limit + 1, page.after_ts, page.after_id)
    return json_response(respond(rows, page, render.job))


async def _pause_all(request: web.Request, paused: bool) -> web.Response:
    """Every job of the group as POST /v1/jobs/{id}/pause (resume) would leave it; `updated`
    counts the jobs that changed (those already so are left as they are)."""
    require(request, "jobs:write")
    group = await _load(request)
    body = await read_object(request)
    reason = pause_reason(body) if paused else None
    changed = await store.set_paused(request.app[POOL], group, paused, reason)
    for job_id in changed:
        request.app[JOBS].forget(job_id)
    return json_response({"group_id": str(group["id"]), "paused": paused, "updated": len(changed)})


@routes.post("/v1/job-groups/{group_id}/pause-all")
async def pause_all(request: web.Request) -> web.Response:
    return await _pause_all(request, True)


@routes.post("/v1/job-groups/{group_id}/resume-all")
async def resume_all(request: web.Request) -> web.Response:
    return await _pause_all(request, False)


@routes.get("/v1/job-groups/{group_id}/stats")
async def group_stats(request: web.Request) -> web.Response:
    """How many jobs, how many of them paused (themselves or their project), their runs by status."""
    require(request, "jobs:read")
    group = await _load(request)
    row = await store.stats(request.app[POOL], group)
    runs = dict(row["runs"])
    return json_response(
        {
            "group_id": str(group["id"]),
            "job_count": row["jobs"],
            "paused_job_count": row["paused_jobs"],
            "run_count": sum(runs.values()),
            "runs_by_status": runs,
        }
    )
