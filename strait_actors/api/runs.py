"""Runs on the management plane (api.md §4.4): read, list, cancel, replay, DLQ, events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from strait_actors import fsm
from strait_actors.api import render, run_filters, streams
from strait_actors.api.auth import check_project, project_scope, require
from strait_actors.api.http import json_response, long_lived, read_object
from strait_actors.api.pagination import page_of, respond
from strait_actors.api.state import HUB, POOL, SETTINGS
from strait_actors.errors import ApiError, bad_request, conflict, not_found
from strait_actors.ids import parse_uuid
from strait_actors.payloads import clean_str
from strait_actors.store import dependencies as deps_store
from strait_actors.store import jobs as jobs_store
from strait_actors.store import runs as store
from strait_actors.store import sdk as sdk_store
from strait_actors.store.sql import Row

routes = web.RouteTableDef()


async def load_run(request: web.Request) -> Row:
    run_id = parse_uuid(request.match_info["run_id"])
    row = await store.get_run(request.app[POOL], run_id) if run_id else None
    if row is None:
        raise not_found("run not found")
    check_project(request, row["project_id"], "run")
    return row


@routes.get("/v1/runs")
async def list_runs(request: web.Request) -> web.Response:
    require(request, "runs:read")
    project = project_scope(request)
    page = page_of(request)
    filters = run_filters.filters(request.query) | {
        "project_id": project,
        "limit": page.limit + 1,
        "after_ts": page.after_ts,
        "after_id": page.after_id,
    }
    rows = await store.list_runs(request.app[POOL], filters)
    return json_response(respond(rows, page, render.run))


@routes.get("/v1/runs/dlq")
async def list_dlq(request: web.Request) -> web.Response:
    require(request, "runs:read")
    project = project_scope(request)
    page = page_of(request)
    rows = await store.list_dead_letter(request.app[POOL], project, page.limit + 1, page.after_ts, page.after_id)
    return json_response(respond(rows, page, render.run))


@routes.post("/v1/runs/bulk-dlq-replay")
async def bulk_dlq_replay(request: web.Request) -> web.Response:
    """`{run_ids}` xor `{project_id, limit <= 500}` -> `{replayed, count}` (api.md §4.4)."""
    who = require(request, "runs:write")
    body = await read_object(request)
    ids, project = body.get("run_ids"), body.get("project_id")
    if (ids is None) == (project is None):
        raise bad_request("give either run_ids or project_id")
    limit = body.get("limit", 500)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 500:
        raise bad_request("limit must be between 1 and 500")
    if ids is not None:
        if not isinstance(ids, list) or not ids or len(ids) > 500:
            raise bad_request("run_ids must be a list of 1 to 500 run ids")
        parsed = [parse_uuid(i) if isinstance(i, str) else None for i in ids]
        if any(p is None for p in parsed):
            raise bad_request("run_ids must be run ids")
        project = project_scope(request)
    elif not isinstance(project, str) or not project:
        raise bad_request("project_id must be a string")
    else:
        project = clean_str(project)  # as project ids are stored: a lone surrogate cannot reach SQL
        check_project(request, project, "project")
        parsed = None
    replayed = await store.bulk_dlq_replay(request.app[POOL], project, parsed, limit, who.actor)  # type: ignore[arg-type]
    return json_response({"replayed": [str(i) for i in replayed], "count": len(replayed)})


@routes.get("/v1/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    require(request, "runs:read")
    return json_response(render.run(await load_run(request)))


@routes.get("/v1/runs/{run_id}/dependency-status")
@routes.get("/v1/runs/{run_id}/dependencies")  # the path the official client calls (api.md §4.4 ⚠)
async def dependency_status(request: web.Request) -> web.Response:
    """Whether the run waits on its job's dependencies, and each dependency as it stands now."""
    require(request, "runs:read")
    run = await load_run(request)
    rows = await deps_store.status_of(request.app[POOL], run["id"])
    return json_response(
        {
            "run_id": str(run["id"]),
            "status": run["status"],
            "waiting_on_dependencies": bool(run.get("awaits_dependencies")),
            "dependencies": [
                {
                    "id": str(r["id"]),
                    "depends_on_job_id": str(r["depends_on_job_id"]),
                    "condition": r["condition"],
                    "met": r["met"],
                }
                for r in rows
            ],
        }
    )


@routes.delete("/v1/runs/{run_id}")
async def cancel_run(request: web.Request) -> web.Response:
    who = require(request, "runs:write")
    run = await load_run(request)
    if fsm.is_terminal(run["status"]):
        raise bad_request("run already in terminal state")
    row = await store.cancel_run(request.app[POOL], run["id"], who.actor)
    if row is None:
        # it moved on between the read and the write: terminal now, or some other conflict
        latest = await store.get_run(request.app[POOL], run["id"])
        if latest is not None and fsm.is_terminal(latest["status"]):
            raise bad_request("run already in terminal state")
        raise conflict("failed to cancel run")
    return json_response(render.run(row))


@routes.post("/v1/runs/{run_id}/replay")
async def replay_run(request: web.Request) -> web.Response:
    who = require(request, "runs:write")
    run = await load_run(request)
    if run["status"] not in fsm.REPLAYABLE:
        raise bad_request("run is not replayable")
    job = await jobs_store.get_job(request.app[POOL], run["job_id"])
    if job is None or not job["enabled"]:
        raise bad_request("job is disabled")
    if request.query.get("from_checkpoint"):
        raise not_found("checkpoint not found")
    row = await store.replay_run(request.app[POOL], run["id"], who.actor)
    if row is None:
        raise not_found("run not found")
    return json_response(render.run(row), 201)


@routes.post("/v1/runs/{run_id}/dlq-replay")
async def dlq_replay(request: web.Request) -> web.Response:
    who = require(request, "runs:write")
    run = await load_run(request)
    if run["status"] != fsm.S.DEAD_LETTER:
        raise conflict("run is not in dead_letter status")
    row = await store.dlq_replay(request.app[POOL], run["id"], who.actor)
    if row is None:
        raise conflict("run is not in dead_letter status")
    return json_response(render.run(row))


@routes.get("/v1/runs/{run_id}/events")
async def list_events(request: web.Request) -> web.Response:
    require(request, "runs:read")
    run = await load_run(request)
    page = page_of(request, id_kind="int")
    rows = await store.list_events(
        request.app[POOL],
        run["id"],
        level=request.query.get("level"),
        type_=request.query.get("type"),
        limit=page.limit + 1,
        after_ts=page.after_ts,
        after_id=page.after_id,
    )
    return json_response(respond(rows, page, render.run_event))


@routes.get("/v1/runs/{run_id}/checkpoints")
async def list_checkpoints(request: web.Request) -> web.Response:
    """Highest sequence first; the cursor's id part is the last sequence returned."""
    require(request, "runs:read")
    run = await load_run(request)
    page = page_of(request, id_kind="int")
    before = page.after_id if page.after_id is not None else None
    rows = await sdk_store.list_checkpoints(request.app[POOL], run["id"], page.limit + 1, before)
    keyed = [{**r, "id": r["sequence"], "checkpoint_id": r["id"]} for r in rows]
    body = respond(keyed, page, lambda r: render.checkpoint({**r, "id": r["checkpoint_id"]}))
    return json_response(body)


@routes.get("/v1/runs/{run_id}/outputs")
async def list_outputs(request: web.Request) -> web.Response:
    """By output key; the cursor's id part is the last key returned."""
    require(request, "runs:read")
    run = await load_run(request)
    page = page_of(request, id_kind="str")
    rows = await sdk_store.list_outputs(request.app[POOL], run["id"], page.limit + 1, page.after_id)
    keyed = [{**r, "id": r["output_key"], "output_id": r["id"]} for r in rows]
    return json_response(respond(keyed, page, lambda r: render.output({**r, "id": r["output_id"]})))


async def _rows_of_run(
    request: web.Request, query: str, render_row: Callable[[dict[str, Any]], dict[str, Any]], id_kind: str = "int"
) -> web.Response:
    """One page of a run's rows in (created_at, id) order."""
    require(request, "runs:read")
    run = await load_run(request)
    page = page_of(request, id_kind=id_kind)
    pool = request.app[POOL]
    rows = await sdk_store.list_of_run(pool, query, run["id"], page.limit + 1, page.after_ts, page.after_id)
    return json_response(respond(rows, page, render_row))


@routes.get("/v1/runs/{run_id}/usage")
async def list_usage(request: web.Request) -> web.Response:
    return await _rows_of_run(request, "list_usage", render.usage)


@routes.get("/v1/runs/{run_id}/tool-calls")
async def list_tool_calls(request: web.Request) -> web.Response:
    return await _rows_of_run(request, "list_tool_calls", render.tool_call)


@routes.get("/v1/runs/{run_id}/children")
async def list_children(request: web.Request) -> web.Response:
    return await _rows_of_run(request, "list_children", render.run, id_kind="uuid")


@routes.get("/v1/runs/{run_id}/lineage")
async def lineage(request: web.Request) -> web.Response:
    """The continue-as-new chain the run belongs to, root first (EXTRA in api.md §4.4)."""
    require(request, "runs:read")
    run = await load_run(request)
    rows = await sdk_store.lineage(request.app[POOL], run["id"])
    return json_response({"run_id": str(run["id"]), "data": [render.run(r) for r in rows]})


@routes.get("/v1/runs/{run_id}/stream")
@long_lived
async def stream(request: web.Request) -> web.StreamResponse:
    """SSE (api.md §4.5): status changes, progress and log events as they happen; a client that
    reconnects with Last-Event-ID gets what it missed. Ends after the run's terminal status change."""
    require(request, "runs:read")
    run = await load_run(request)
    raw = request.headers.get("Last-Event-ID")
    after: int | None = None
    if raw is not None and raw.strip():
        try:
            after = int(raw)
        except ValueError:
            raise bad_request("Last-Event-ID must be an event id") from None
        if not 0 <= after < 2**63:
            raise bad_request("Last-Event-ID must be an event id")
    if fsm.is_terminal(run["status"]) and after is None:
        raise ApiError(410, "run already in terminal state")
    return await streams.serve(request, request.app[HUB], run, after, request.app[SETTINGS])
