"""Environments [EXTRA] (api.md §9 lists them; the shapes are ours): a project's named string
variables. A job bound to one (`environment_id`) is dispatched to its `ENDPOINT_URL` when it has
one (engine.md §3.1 step 4), which is checked as a job endpoint is (§3.6) when it is saved.

Decisions: `PATCH` replaces `variables` as a whole (send the full map; leave it out or null to keep
it); deleting an environment jobs are bound to is a 409 (unbind them first: a silent unbinding would
move their runs to another endpoint)."""

from __future__ import annotations

import re
from typing import Any, Final

from aiohttp import web

from strait_actors.api import render
from strait_actors.api.auth import caller, check_project, project_scope, require
from strait_actors.api.http import json_response, no_content, read_object
from strait_actors.api.jobs import resolve_off_loop, url_check
from strait_actors.api.pagination import page_of, respond
from strait_actors.api.state import POOL
from strait_actors.api.validation import check_url, storable
from strait_actors.errors import ApiError, bad_request, conflict, forbidden, not_found, unprocessable
from strait_actors.ids import parse_uuid
from strait_actors.payloads import clean_str
from strait_actors.store import environments as store
from strait_actors.store.errors import MissingReference
from strait_actors.store.sql import Row

routes = web.RouteTableDef()

MAX_VARIABLES: Final = 100
MAX_VALUE_LEN: Final = 8192
ENDPOINT_URL: Final = "ENDPOINT_URL"
_VAR_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}\Z")


def _text(body: dict[str, Any], name: str, max_len: int, details: list[str], *, required: bool = False) -> Any:
    """A string field: None when absent or null (or blank, unless required), 422 details otherwise."""
    raw = body.get(name)
    if raw is None:
        if required:
            details.append(f"{name}: failed on 'required'")
        return None
    if not isinstance(raw, str):
        details.append(f"{name}: failed on 'type'")
        return None
    value = clean_str(raw).strip()  # NULs stripped, lone surrogates replaced (api.md §0.3)
    if not value and required:
        details.append(f"{name}: failed on 'required'")
    elif len(value) > max_len:
        details.append(f"{name}: failed on 'max'")
    return value


def named_fields(body: dict[str, Any], *, patch: bool, extra: tuple[tuple[str, int], ...] = ()) -> dict[str, Any]:
    """`name` (1-255, required on create) and `description` (≤ 2000) and `extra`, as sent: a patch
    holds only the fields sent (an empty string clears an optional one). 422 with every detail."""
    details: list[str] = []
    out: dict[str, Any] = {}
    for name, max_len in (("name", 255), ("description", 2000), *extra):
        if patch and body.get(name) is None:
            continue
        value = _text(body, name, max_len, details, required=name == "name")
        out[name] = value or None
    if details:
        raise unprocessable("validation failed", details)
    return out


def _variables(raw: Any) -> dict[str, str]:
    """string → string, at most MAX_VARIABLES, names like shell variables, values PostgreSQL can hold."""
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise unprocessable("validation failed", ["variables: failed on 'type'"])
    if len(raw) > MAX_VARIABLES:
        raise unprocessable("validation failed", ["variables: failed on 'max'"])
    for key, value in raw.items():
        if not _VAR_NAME.match(key):
            shown = clean_str(key)[:64]
            raise bad_request(f"invalid variable name {shown!r}: letters, digits and _, not starting with a digit")
        if len(value) > MAX_VALUE_LEN:
            raise bad_request(f"variable {key} must be at most {MAX_VALUE_LEN} characters")
        if not storable(value):
            raise bad_request(f"variable {key} must not contain NUL or invalid UTF-8")
    return dict(raw)


async def _validated(request: web.Request, body: dict[str, Any], *, patch: bool) -> dict[str, Any]:
    out = named_fields(body, patch=patch, extra=(("slug", 128),))
    if out.get("slug") is not None and not _SLUG.match(out["slug"]):
        raise unprocessable("validation failed", ["slug: failed on 'slug'"])
    if body.get("variables") is not None or not patch:
        out["variables"] = _variables({} if body.get("variables") is None else body["variables"])
        endpoint = out["variables"].get(ENDPOINT_URL)
        if endpoint is not None:  # engine.md §3.6: the override is saved only if a job endpoint could be
            await resolve_off_loop(check_url, ENDPOINT_URL, endpoint, url_check(request))
    return out


def target_project(request: web.Request, body: dict[str, Any]) -> str:
    """The project a create is for: `project_id` in the body, else the caller's; a key bound to
    one project cannot create in another (403)."""
    pid = body.get("project_id")
    who = caller(request)
    if pid is None or pid == "":
        return project_scope(request)
    if not isinstance(pid, str) or not storable(pid):
        raise unprocessable("validation failed", ["project_id: failed on 'type'"])
    if who.project_id and pid != who.project_id:
        raise forbidden("project_id does not match authenticated project")
    return pid


async def _load(request: web.Request) -> Row:
    env_id = parse_uuid(request.match_info["env_id"])
    row = None if env_id is None else await store.get(request.app[POOL], env_id)
    if row is None:
        raise not_found("environment not found")
    check_project(request, row["project_id"], "environment")
    return row


def _taken(name: Any) -> ApiError:
    return conflict(f"environment with name {name!r} already exists in this project")


@routes.post("/v1/environments")
async def create_environment(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    body = await read_object(request)
    project = target_project(request, body)
    values = await _validated(request, body, patch=False)
    try:
        row = await store.insert(request.app[POOL], project, values)
    except store.NameTaken:
        raise _taken(values["name"]) from None
    except MissingReference:
        raise not_found("project not found") from None
    return json_response(render.environment(row), 201)


@routes.get("/v1/environments")
async def list_environments(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    project = project_scope(request)
    page = page_of(request)
    rows = await store.list_page(request.app[POOL], project, page.limit + 1, page.after_ts, page.after_id)
    return json_response(respond(rows, page, render.environment))


@routes.get("/v1/environments/{env_id}")
async def get_environment(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    return json_response(render.environment(await _load(request)))


@routes.patch("/v1/environments/{env_id}")
async def update_environment(request: web.Request) -> web.Response:
    """Jobs bound to the environment take its new ENDPOINT_URL (or their own endpoint) in the same
    transaction: their next claim dispatches there."""
    require(request, "jobs:write")
    current = await _load(request)
    changes = await _validated(request, await read_object(request), patch=True)
    try:
        row = await store.update(request.app[POOL], current, changes)
    except store.NameTaken:
        raise _taken(changes.get("name")) from None
    if row is None:
        raise not_found("environment not found")
    return json_response(render.environment(row))


@routes.delete("/v1/environments/{env_id}")
async def delete_environment(request: web.Request) -> web.Response:
    require(request, "jobs:write")
    current = await _load(request)
    try:
        gone = await store.delete(request.app[POOL], current["id"])
    except store.InUse as exc:
        raise conflict(f"environment is used by {exc.jobs} job(s) -- unbind them first") from None
    if not gone:
        raise not_found("environment not found")
    return no_content()


@routes.get("/v1/environments/{env_id}/variables")
async def list_variables(request: web.Request) -> web.Response:
    require(request, "jobs:read")
    row = await _load(request)
    return json_response({"environment_id": str(row["id"]), "variables": row["variables"]})
