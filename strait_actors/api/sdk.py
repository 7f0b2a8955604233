"""The SDK plane, `/sdk/v1/runs/{runID}/…` (api.md §1.6, §4.9): a run's own code talking back.

Authenticated by the run token alone, checked in the contract's order: the token itself here, in
the gate (401 missing or invalid, 403 another run's token), then against the run as each call's
statement read it (404 no such run, 410 terminal, 401 a stale attempt or lease, 409 a mutating call
on a run that is neither executing nor waiting). The frequent calls are batched (`store.sdk`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from strait_actors import fsm, payloads, schemas, ssrf, tokens
from strait_actors.api import render
from strait_actors.api.http import Handler, bounded, json_response, no_content, off_loop, read_json
from strait_actors.api.state import BUDGETS, DEADLINES, JOBS, POOL, RUN_TOKENS, SDK, SETTINGS, TOKEN
from strait_actors.api.triggers import check_budget, check_job, check_payloads
from strait_actors.api.validation import event_key, json_value, wait_timeout
from strait_actors.errors import ApiError, bad_request, conflict, not_found, unauthorized, unprocessable
from strait_actors.ids import hash_key, parse_uuid
from strait_actors.payloads import clean_str
from strait_actors.store import events as events_store
from strait_actors.store import projects as projects_store
from strait_actors.store.sdk import Token
from strait_actors.store.sql import Row

routes = web.RouteTableDef()

PREFIX = "/sdk/v1/"
_MAJOR = re.compile(r"v?([0-9]{1,6})(?:[.\-+]|$)")
ACTIVE = frozenset({fsm.S.EXECUTING, fsm.S.WAITING})
LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "error": "error"}
MAX_STATE_KEY = 256
MAX_STATE_VALUE = 64 * 1024
MAX_TEXT = 64 * 1024  # a log message, an error text


# ----------------------------------------------------------------- the token


class _Verified:
    """What a run token that passed its own checks says: kept by the token's text (a run's code
    makes several calls with one token), so only the first call pays for the signature."""

    __slots__ = ("exp", "sub", "token")

    def __init__(self, sub: str, exp: float, token: Token | None) -> None:
        self.sub = sub
        self.exp = exp
        self.token = token  # None: `sub` is not a run ID


class TokenCache:
    """Verified run tokens, the newest MAX_TOKENS of them (a token's expiry is checked on every
    call; the signing key is the process's own, so a cached token cannot go stale otherwise)."""

    MAX_TOKENS = 4096

    def __init__(self) -> None:
        self.verified: dict[str, _Verified] = {}

    def get(self, key: str, raw: str) -> _Verified:
        hit = self.verified.get(raw)
        if hit is not None:
            if hit.exp <= time.time():
                del self.verified[raw]
                raise unauthorized("invalid run token")
            return hit
        hit = _verify(key, raw)
        if len(self.verified) >= self.MAX_TOKENS:
            del self.verified[next(iter(self.verified))]
        self.verified[raw] = hit
        return hit


def _verify(key: str, raw: str) -> _Verified:
    try:
        claims = tokens.verify_run_token(key, raw)
    except tokens.InvalidRunToken:
        raise unauthorized("invalid run token") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise unauthorized("missing run ID in token")
    attempt = claims.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise unauthorized("missing run attempt in token")
    run_id = parse_uuid(sub)
    lease = claims.get("lease_id")
    token = None if run_id is None else Token(run_id, attempt, parse_uuid(lease) if isinstance(lease, str) else None)
    try:  # a number (our own tokens; PyJWT's path admits what int() reads)
        exp = float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        raise unauthorized("invalid run token") from None
    return _Verified(sub, exp, token)


def _claims(request: web.Request) -> Token:
    """The token's own checks (§1.6, first five rows); the run's come with each statement."""
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise unauthorized("missing or invalid authorization header")
    verified = request.app[RUN_TOKENS].get(request.app[SETTINGS].jwt_signing_key, raw)
    if verified.sub != request.match_info.get("run_id"):
        raise ApiError(403, "token does not match run ID")
    if verified.token is None:
        raise not_found("run not found")
    return verified.token


def check(row: Mapping[str, Any] | None, token: Token, *, mutating: bool) -> None:
    """The run's rows of §1.6, in order, against what a statement read of it."""
    if row is None or row.get("status") is None:
        raise not_found("run not found")
    status = row["status"]
    if status in fsm.TERMINAL:
        raise ApiError(410, "run has reached a terminal state")
    if row["attempt"] != token.attempt:
        raise unauthorized("run token attempt is stale")
    lease = row["token_lease"]
    if lease is not None and lease != token.lease_id:  # the run was dispatched again since
        raise unauthorized("run token lease is stale")
    if mutating and status not in ACTIVE:
        raise conflict("run is not active for this SDK token")


def _done(row: Mapping[str, Any], token: Token) -> None:
    """A batched write that did not apply: why, or a conflict when the run moved under it."""
    if not row["done"]:
        if "chk_status" in row:  # sdk_finish names the checked columns apart from the run's own
            row = {"status": row["chk_status"], "attempt": row["chk_attempt"], "token_lease": row["token_lease"]}
        check(row, token, mutating=True)
        raise conflict("run status conflict")


async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Everything an SDK call passes before its handler (from the app's one gate middleware): the
    token, REQUEST_TIMEOUT, and the version headers of §1.6."""
    version = request.headers.get("X-SDK-Version", "")
    usable = 0 < len(version) <= 64 and version.isascii() and version.isprintable()
    major = _MAJOR.match(version) if usable else None
    headers = {
        "X-SDK-Version-Accepted": version if usable else "legacy",
        "X-SDK-Capabilities": "progress,checkpoint" if major and int(major.group(1)) >= 2 else "none",
    }
    try:
        if request.match_info.http_exception is None:  # a known route: its token decides
            request[TOKEN] = _claims(request)
        resp = await request.app[DEADLINES].call(lambda: handler(request))
    except TimeoutError:
        raise ApiError(503, "request timed out", headers={"Retry-After": "1", **headers}) from None
    except ApiError as err:
        err.headers.update(headers)
        raise
    resp.headers.update(headers)
    return resp


async def _active_run(request: web.Request, *, mutating: bool = True) -> tuple[Token, Row]:
    token = request[TOKEN]
    row = await request.app[SDK].run(token.run_id)
    check(row, token, mutating=mutating)
    assert row is not None
    return token, row


# ----------------------------------------------------------------- bodies


async def _body(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """The JSON object sent (empty is {}); a field this call does not know is a 400."""
    body = await read_json(request)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise bad_request("invalid request body: expected a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown field {clean_str(unknown[0])!r}; this call takes {', '.join(sorted(allowed))}")
    return body


def _missing(name: str) -> ApiError:
    return unprocessable("validation failed", [f"{name}: failed on 'required'"])


def _wrong(name: str, rule: str) -> ApiError:
    return unprocessable("validation failed", [f"{name}: failed on '{rule}'"])


def _text(body: Mapping[str, Any], name: str, *, required: bool = False, max_len: int = MAX_TEXT) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str):
        raise _wrong(name, "string")
    if required and not value:
        raise _missing(name)
    if len(value) > max_len:
        raise bad_request(f"{name} is longer than {max_len} characters")
    return clean_str(value)


def _int(body: Mapping[str, Any], name: str, *, lo: int = 0, hi: int = 2**63 - 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(name, "integer")
    if not lo <= value <= hi:
        raise _wrong(name, f"min={lo},max={hi}")
    return value


def _json(value: Any) -> Any:
    """A JSON value as PostgreSQL can hold it (no NUL, no lone surrogate, nested at most
    MAX_DEPTH deep); 400 otherwise."""
    return json_value(value)


def _size(value: Any) -> int:
    return len(payloads.dumps(value))


# ----------------------------------------------------------------- heartbeat, log, progress


@routes.post("/sdk/v1/runs/{run_id}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    token = request[TOKEN]
    await _body(request, frozenset())
    _done(await request.app[SDK].heartbeat(token), token)
    return json_response({"status": "ok"})


async def _event(request: web.Request, type_: str, level: str, message: str, data: Any) -> web.Response:
    token = request[TOKEN]
    row = await request.app[SDK].event(token, type_, level, message, data)
    _done(row, token)
    event = {
        "id": row["event_id"],
        "run_id": token.run_id,
        "type": type_,
        "level": level,
        "message": message,
        "data": data,
        "created_at": row["created_at"],
    }
    return json_response(render.run_event(event), 201)


@routes.post("/sdk/v1/runs/{run_id}/log")
async def log(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"level", "message", "type", "data"}))
    message = _text(body, "message", required=True)
    level = LEVELS.get(str(body.get("level") or "info").lower())
    if level is None:
        raise _wrong("level", "oneof=debug info warn error")
    type_ = _text(body, "type", max_len=64) or "log"
    if type_ in ("state_change", "progress"):  # the server's own event types: not forgeable by a run
        raise bad_request(f"type {type_!r} is reserved; log events take any other type")
    data = body.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise _wrong("data", "object")
    return await _event(request, type_, level, message or "", _json(data))


@routes.post("/sdk/v1/runs/{run_id}/progress")
async def progress(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"percent", "message", "step", "eta_seconds"}))
    percent = body.get("percent")
    if percent is None:
        raise _missing("percent")
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        raise _wrong("percent", "number")
    if not 0 <= percent <= 100:
        raise _wrong("percent", "min=0,max=100")
    message = _text(body, "message") or ""
    data: dict[str, Any] = {"percent": percent}
    step = body.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, str | int):
            raise _wrong("step", "string")
        data["step"] = clean_str(step) if isinstance(step, str) else step
    eta = body.get("eta_seconds")
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, int | float) or eta < 0:
            raise _wrong("eta_seconds", "min=0")
        data["eta_seconds"] = eta
    return await _event(request, "progress", "info", message, data)


# ----------------------------------------------------------------- complete, fail


async def _check_result(request: web.Request, token: Token, result: Any) -> None:
    """The result against its job's `result_schema`: 422 `result_schema_validation_failed`."""
    run = await request.app[SDK].run(token.run_id)
    check(run, token, mutating=True)
    assert run is not None
    job = await request.app[JOBS].get(request.app[POOL], run["job_id"])
    if job is None or not job["result_schema"]:
        return
    validator = schemas.job_validator(job, "result_schema")
    try:
        error = await bounded(lambda deadline: schemas.first_error(validator, result, deadline))
    except schemas.OutOfTime:
        raise bad_request(
            f"result cannot be validated: the result_schema took longer than {schemas.VALIDATION_BUDGET} s"
        ) from None
    except schemas.SchemaUnusable as exc:
        raise bad_request(
            clean_str(f"result cannot be validated: the job's result_schema is unusable: {exc}")
        ) from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ApiError(
            422,
            "result does not match the job's result_schema",
            code="result_schema_validation_failed",
            details=[clean_str(f"{where}: {error.message}")],
        )


@routes.post("/sdk/v1/runs/{run_id}/complete")
async def complete(request: web.Request) -> web.Response:
    token = request[TOKEN]
    body = await _body(request, frozenset({"result"}))
    result = _json(body.get("result"))
    text = None
    if result is not None:
        text = payloads.dumps(result).decode()
        limit = request.app[SETTINGS].max_result_size
        if len(text) > limit:
            raise ApiError(413, f"result too large ({len(text)} bytes; limit {limit})")
    sdk = request.app[SDK]
    row = await sdk.finish(token, fsm.S.COMPLETED, result=text)
    if row["needs_check"]:
        await _check_result(request, token, result)
        row = await sdk.finish(token, fsm.S.COMPLETED, result=text, checked=True)
    _done(row, token)
    return json_response(render.run(row))


@routes.post("/sdk/v1/runs/{run_id}/fail")
async def fail(request: web.Request) -> web.Response:
    token = request[TOKEN]
    body = await _body(request, frozenset({"error", "error_class"}))
    error = _text(body, "error", required=True)
    error_class = _text(body, "error_class", max_len=64)
    row = await request.app[SDK].finish(token, fsm.S.FAILED, error=error, error_class=error_class)
    _done(row, token)
    return json_response(render.run(row))


# ----------------------------------------------------------------- checkpoint, output, state, payload


@routes.post("/sdk/v1/runs/{run_id}/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"state", "source"}))
    if body.get("state") is None:
        raise _missing("state")
    source = _text(body, "source", max_len=64) or "sdk"
    token, _ = await _active_run(request)
    row = await request.app[SDK].checkpoint(token.run_id, _json(body["state"]), source)
    return json_response(render.checkpoint(row), 201)


@routes.post("/sdk/v1/runs/{run_id}/output")
async def output(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"key", "output_key", "value", "schema"}))
    name = "output_key" if body.get("output_key") is not None else "key"
    key = _text(body, name, max_len=MAX_STATE_KEY)
    if not key:
        raise _missing("output_key")
    if "value" not in body:
        raise _missing("value")
    value = _json(body["value"])
    schema = body.get("schema")
    if schema is not None:
        try:
            schemas.check(schema)
            validator = schemas.validator(schema)
            error = await bounded(lambda deadline: schemas.first_error(validator, value, deadline))
        except schemas.SchemaInvalid as exc:
            raise bad_request(clean_str(f"output schema is invalid: {exc}")) from None
        except schemas.OutOfTime:
            raise bad_request("output schema validation failed: it took too long") from None
        except schemas.SchemaUnusable as exc:
            raise bad_request(clean_str(f"output schema validation failed: {exc}")) from None
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise bad_request(clean_str(f"output schema validation failed: {where}: {error.message}"))
    token, _ = await _active_run(request)
    row = await request.app[SDK].output(token.run_id, key, value, _json(schema))
    return json_response(render.output(row), 201)


@routes.post("/sdk/v1/runs/{run_id}/state")
async def set_state(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"key", "value"}))
    key = _text(body, "key", required=True, max_len=10**9)
    assert key is not None
    if len(key) > MAX_STATE_KEY:
        raise bad_request(f"state key is longer than {MAX_STATE_KEY} characters")
    if "value" not in body:
        raise _missing("value")
    value = _json(body["value"])
    if _size(value) > MAX_STATE_VALUE:
        raise bad_request(f"state value is larger than {MAX_STATE_VALUE} bytes")
    token, _ = await _active_run(request)
    row = await request.app[SDK].set_state(token.run_id, key, value)
    return json_response(render.state(row), 201)


@routes.get("/sdk/v1/runs/{run_id}/state")
async def list_state(request: web.Request) -> web.Response:
    token, _ = await _active_run(request, mutating=False)
    return json_response([render.state(r) for r in await request.app[SDK].list_state(token.run_id)])


def _state_key(request: web.Request) -> str:
    key = request.match_info["key"]
    if len(key) > MAX_STATE_KEY:
        raise bad_request(f"state key is longer than {MAX_STATE_KEY} characters")
    return clean_str(key)


@routes.get("/sdk/v1/runs/{run_id}/state/{key}")
async def get_state(request: web.Request) -> web.Response:
    key = _state_key(request)
    token, _ = await _active_run(request, mutating=False)
    row = await request.app[SDK].get_state(token.run_id, key)
    if row is None:
        raise not_found("state key not found")
    return json_response(render.state(row))


@routes.delete("/sdk/v1/runs/{run_id}/state/{key}")
async def delete_state(request: web.Request) -> web.Response:
    key = _state_key(request)
    token, _ = await _active_run(request)
    await request.app[SDK].delete_state(token.run_id, key)
    return no_content()


@routes.get("/sdk/v1/runs/{run_id}/payload")
async def payload(request: web.Request) -> web.Response:
    _, row = await _active_run(request, mutating=False)
    return web.Response(body=row["payload"].encode(), content_type="application/json")


# ----------------------------------------------------------------- annotate, usage, tool calls


@routes.post("/sdk/v1/runs/{run_id}/annotate")
async def annotate(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"annotations"}))
    annotations = body.get("annotations")
    if not isinstance(annotations, dict) or not 1 <= len(annotations) <= 50:
        raise bad_request("annotations must be an object of 1 to 50 entries")
    clean: dict[str, str] = {}
    for k, v in annotations.items():
        if not 1 <= len(k) <= 128:
            raise bad_request("annotation keys must be 1 to 128 characters")
        if not isinstance(v, str) or len(v) > 1024:
            raise bad_request(f"annotation {clean_str(k)!r} must be a string of at most 1024 characters")
        clean[clean_str(k)] = clean_str(v)
    token, _ = await _active_run(request)
    row = await request.app[SDK].annotate(token, clean)
    if row is None:
        check(await request.app[SDK].run(token.run_id), token, mutating=True)
        raise conflict("run status conflict")
    return json_response(render.run(row))


_USAGE_FIELDS = frozenset({"provider", "model", "prompt_tokens", "completion_tokens", "total_tokens", "cost_microusd"})


@routes.post("/sdk/v1/runs/{run_id}/usage")
async def usage(request: web.Request) -> web.Response:
    body = await _body(request, _USAGE_FIELDS)
    values: dict[str, Any] = {
        "provider": _text(body, "provider", required=True, max_len=256),
        "model": _text(body, "model", required=True, max_len=256),
    }
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_microusd"):
        values[name] = _int(body, name) or 0
    if not values["total_tokens"]:
        values["total_tokens"] = min(values["prompt_tokens"] + values["completion_tokens"], 2**63 - 1)
    token, run = await _active_run(request)
    project = run["project_id"]
    budgets = request.app[BUDGETS]
    quota = await budgets.quota(project)
    row = await request.app[SDK].usage(token.run_id, project, values)
    budgets.spent(project, values["cost_microusd"])
    cap = quota["max_cost_per_run_microusd"] if quota is not None else None
    if cap is not None and row["run_cost_microusd"] > cap:
        # over its own budget the run ends, failed with class `budget` (engine.md §9.1): the usage
        # stays recorded (it was spent, and the project's daily budget counts it)
        error = f"per-run cost budget exceeded ({row['run_cost_microusd']} > {cap} micro-USD)"
        await request.app[SDK].finish(token, fsm.S.FAILED, error=error, error_class="budget")
        raise ApiError(429, error)
    return json_response(render.usage(row), 201)


@routes.post("/sdk/v1/runs/{run_id}/tool-call")
async def tool_call(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"tool_name", "input", "output", "duration_ms", "status"}))
    values = {
        "tool_name": _text(body, "tool_name", required=True, max_len=256),
        "input": _json(body.get("input")),
        "output": _json(body.get("output")),
        "duration_ms": _int(body, "duration_ms"),
        "status": _text(body, "status", max_len=64),
    }
    token, _ = await _active_run(request)
    row = await request.app[SDK].tool_call(token.run_id, values)
    return json_response(render.tool_call(row), 201)


# ----------------------------------------------------------------- durable waits


@routes.post("/sdk/v1/runs/{run_id}/wait-for-event")
async def wait_for_event(request: web.Request) -> web.Response:
    """Park the run on an event and answer at once (§4.9): the run is no longer executing, so the
    endpoint's HTTP answer that follows is dropped (§5.5); the event's arrival dispatches it again."""
    body = await _body(request, frozenset({"event_key", "timeout_secs", "notify_url"}))
    key = event_key(body.get("event_key"))
    timeout = wait_timeout(body.get("timeout_secs"))
    notify_url = body.get("notify_url")
    if notify_url is not None:
        if not isinstance(notify_url, str) or clean_str(notify_url) != notify_url:
            raise bad_request("notify_url must be a string of valid UTF-8")
        s = request.app[SETTINGS]
        try:
            check_url = ssrf.check_url
            await off_loop(lambda: check_url(notify_url, allow_private=s.allow_private_endpoints))
        except ssrf.UnsafeURL as exc:
            raise bad_request(f"notify_url is not allowed: {exc}") from None
    token = request[TOKEN]
    try:
        row = await events_store.wait_for_event(request.app[POOL], token, key, timeout, notify_url)
    except events_store.KeyInUse:
        raise conflict("event key already in use") from None
    if row["id"] is None:
        if row["over_quota"]:
            raise ApiError(429, "project active event trigger quota exceeded", headers={"Retry-After": "60"})
        run = await request.app[SDK].run(token.run_id)
        check(run, token, mutating=True)
        assert run is not None
        raise conflict(f"run must be executing to wait for event, current status: {run['status']}")
    return json_response(
        {
            "status": "waiting",
            "event_key": row["event_key"],
            "expires_at": render.ts(row["expires_at"]),
            "trigger_id": str(row["id"]),
        }
    )


# ----------------------------------------------------------------- spawn and continue

MAX_LINEAGE_DEPTH = 10


def _payload(raw: Any) -> tuple[str, str]:
    try:
        text, digest = payloads.canonical_payload(raw)
    except payloads.PayloadError as exc:
        raise bad_request(str(exc)) from None
    return text.decode(), digest


async def _target_key(request: web.Request, raw: Any, project_id: str) -> None:
    """Spawning into another project takes a key of that project allowed to trigger its jobs."""
    if raw is None:
        raise bad_request("target_api_key is required to spawn a run in another project")
    if not isinstance(raw, str) or not raw.startswith("strait_"):
        raise unauthorized("invalid target_api_key")
    row = await projects_store.api_key_by_hash(request.app[POOL], hash_key(raw))
    if row is None or row["revoked_at"] is not None:
        raise unauthorized("invalid target_api_key")
    if row["expires_at"] is not None and row["expires_at"] <= datetime.now(UTC):
        raise unauthorized("target_api_key has expired")
    if row["project_id"] != project_id:
        raise ApiError(403, "target_api_key does not belong to the target project")
    scopes = frozenset(row["scopes"])
    if scopes and not ({"*", "jobs:*", "jobs:trigger"} & scopes):
        raise ApiError(403, "target_api_key lacks jobs:trigger")


@routes.post("/sdk/v1/runs/{run_id}/spawn")
async def spawn(request: web.Request) -> web.Response:
    fields = {"job_slug", "project_id", "payload", "priority", "await_completion", "await_timeout_secs"}
    body = await _body(request, frozenset(fields | {"target_api_key"}))
    slug = _text(body, "job_slug", required=True, max_len=255)
    project = _text(body, "project_id", required=True, max_len=255)
    assert slug is not None and project is not None
    priority = _int(body, "priority", lo=0, hi=10) or 0
    awaited = body.get("await_completion", False)
    if not isinstance(awaited, bool):
        raise _wrong("await_completion", "boolean")
    timeout = wait_timeout(body.get("await_timeout_secs"))
    token, parent = await _active_run(request)
    if project != parent["project_id"]:
        await _target_key(request, body.get("target_api_key"), project)
    job = await request.app[SDK].job_by_slug(project, slug)
    if job is None:
        raise not_found("job not found")
    check_job(job)
    raw = body.get("payload")
    await check_payloads(job, [raw if raw is not None else {}])
    text, digest = _payload(raw)
    await check_budget(request, project)
    row = await request.app[SDK].spawn(
        token,
        job["id"],
        text,
        digest,
        priority=priority,
        await_completion=awaited,
        timeout_secs=timeout,
        actor=f"run:{token.run_id}",
    )
    if row is None:
        check(await request.app[SDK].run(token.run_id), token, mutating=True)
        raise conflict("run status conflict")
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "job_id": str(row["job_id"]),
        "project_id": row["project_id"],
        "status": row["status"],
        "parent_run_id": str(row["parent_run_id"]),
        "triggered_by": row["triggered_by"],
    }
    if awaited:
        out.update(await_completion=True, await_event_key=row["await_event_key"])
    return json_response(out, 201)


@routes.post("/sdk/v1/runs/{run_id}/continue")
async def continue_as_new(request: web.Request) -> web.Response:
    body = await _body(request, frozenset({"payload"}))
    token, run = await _active_run(request)
    if run["lineage_depth"] >= MAX_LINEAGE_DEPTH:
        raise bad_request(f"lineage depth limit reached ({MAX_LINEAGE_DEPTH} continuations)")
    text = digest = None
    if body.get("payload") is not None:
        job = await request.app[JOBS].get(request.app[POOL], run["job_id"])
        if job is not None:
            await check_payloads(job, [body["payload"]])
        text, digest = _payload(body["payload"])
    await check_budget(request, run["project_id"])
    row = await request.app[SDK].continue_as_new(token, text, digest, MAX_LINEAGE_DEPTH, f"run:{token.run_id}")
    if row is None:
        latest = await request.app[SDK].run(token.run_id)
        check(latest, token, mutating=True)
        if latest is not None and latest["lineage_depth"] >= MAX_LINEAGE_DEPTH:
            raise bad_request(f"lineage depth limit reached ({MAX_LINEAGE_DEPTH} continuations)")
        raise conflict("run status conflict")
    return json_response(render.run(row), 201)
