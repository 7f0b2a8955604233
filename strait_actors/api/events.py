"""Event triggers on the management plane (api.md §4.8): send, list, get, cancel.

A send delivers the payload to what waits on the key in one statement: a waiting run goes back
to the queue with the same attempt and the payload as its newest checkpoint (§5.6). A repeated
identical send answers the trigger again; a different one is a 409.
"""

from __future__ import annotations

from aiohttp import web

from strait_actors import schemas
from strait_actors.api import render
from strait_actors.api.auth import caller, project_scope, require
from strait_actors.api.http import json_response, read_json
from strait_actors.api.pagination import page_of, respond
from strait_actors.api.state import POOL, SENDER
from strait_actors.api.validation import event_key, json_value
from strait_actors.errors import ApiError, bad_request, conflict, forbidden, not_found
from strait_actors.ids import parse_uuid
from strait_actors.store import events as store
from strait_actors.store.sql import Row

routes = web.RouteTableDef()

STATUSES = frozenset({"waiting", "received", "timed_out", "canceled"})
SOURCES = frozenset({"job_run", "workflow_step"})
# the permission each kind of waiter asks of a sender / a canceller (api.md §1.4)
_SEND_SCOPE = {"job_run": "jobs:trigger", "workflow_step": "workflows:trigger"}
_CANCEL_SCOPE = {"job_run": "jobs:write", "workflow_step": "workflows:write"}


async def _trigger(request: web.Request) -> Row:
    """The trigger the path names, in the caller's project (an internal caller without a project
    finds it by key alone, unless two projects use the key)."""
    key = event_key(request.match_info["event_key"])
    found = await store.by_key(request.app[POOL], caller(request).project_id, key)
    if not found:
        raise not_found("event trigger not found")
    if len(found) > 1:
        raise bad_request("the event key is used in more than one project: name the project (X-Project-Id)")
    return found[0]


@routes.post("/v1/events/{event_key:.+}/send")
async def send(request: web.Request) -> web.Response:
    who = caller(request)
    jobs, workflows = who.allows("jobs:trigger"), who.allows("workflows:trigger")
    if not (jobs or workflows):
        raise forbidden("insufficient permissions: requires jobs:trigger or workflows:trigger")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("invalid request body: expected a JSON object")
    unknown = sorted(set(body) - {"payload"})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; this call takes payload")
    payload = json_value(body.get("payload"))
    key = event_key(request.match_info["event_key"])
    project = who.project_id or (await _trigger(request))["project_id"]  # by key alone: find its project
    source = None if jobs and workflows else "job_run" if jobs else "workflow_step"
    row = await request.app[SENDER].send(project, key, source, payload, who.key_id or who.actor or "internal")
    if row["id"] is None:
        raise not_found("event trigger not found")
    require(request, _SEND_SCOPE.get(row["source_type"], "jobs:trigger"))
    if row["received"]:
        return json_response(render.event_trigger(row))
    if row["status"] == "received" and schemas.json_equal(row["response_payload"], payload):
        return json_response(render.event_trigger(row))  # the same event again: idempotent
    raise conflict("event trigger is not in waiting state")


def _choice(request: web.Request, name: str, allowed: frozenset[str]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise bad_request(f"{name} is invalid")
    return value


@routes.get("/v1/events")
async def list_triggers(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    project = project_scope(request)
    page = page_of(request)
    workflow_run_id = request.query.get("workflow_run_id")
    parsed = parse_uuid(workflow_run_id) if workflow_run_id is not None else None
    if workflow_run_id is not None and parsed is None:
        raise bad_request("workflow_run_id is invalid")
    params = {
        "project_id": project,
        "status": _choice(request, "status", STATUSES),
        "source_type": _choice(request, "source_type", SOURCES),
        "workflow_run_id": parsed,
        "limit": page.limit + 1,
        "after_ts": page.after_ts,
        "after_id": page.after_id,
    }
    rows = await store.list_triggers(request.app[POOL], params)
    return json_response(respond(rows, page, render.event_trigger, key="requested_at"))


@routes.get("/v1/events/{event_key:.+}")
async def get_trigger(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    return json_response(render.event_trigger(await _trigger(request)))


@routes.delete("/v1/events/{event_key:.+}")
async def cancel_trigger(request: web.Request) -> web.Response:
    trigger = await _trigger(request)
    who = require(request, _CANCEL_SCOPE.get(trigger["source_type"], "jobs:write"))
    if trigger["status"] != "waiting":
        raise conflict("event trigger is not in waiting state")
    was = await store.cancel(request.app[POOL], trigger["id"], who.actor)
    if was != "waiting":
        raise conflict("event trigger is not in waiting state")
    latest = await store.get(request.app[POOL], trigger["id"])
    if latest is None:
        raise ApiError(404, "event trigger not found")
    return json_response(render.event_trigger(latest))
