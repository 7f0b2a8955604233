"""Request plumbing shared by handlers: JSON in and out, the error envelope, request ids."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from strait_actors import metrics, payloads, schemas
from strait_actors.api.state import REQUEST_ID, SETTINGS, TOKEN
from strait_actors.api.validation import parse_json_body
from strait_actors.errors import ApiError, bad_request
from strait_actors.logs import run_fields
from strait_actors.store.errors import Rejected, Unavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

INLINE_SECS = 0.005  # schema validation on the event loop, at most; then in a worker thread
LARGE_BODY = 64 * 1024  # request bodies parsed in a worker thread, off the event loop
# CPU work of requests (big bodies, slow schemas) in two threads of its own: it cannot take the
# default executor's threads from DNS lookups, and the event loop keeps serving while it runs
_cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="strait-cpu")
_counter = itertools.count(1)
_PREFIX = f"{os.uname().nodename}/{os.urandom(4).hex()}"


_LONG_LIVED: set[Any] = set()


def long_lived(handler: T) -> T:
    """Mark a route handler whose response streams (SSE): REQUEST_TIMEOUT does not apply to it."""
    _LONG_LIVED.add(handler)
    return handler


def is_long_lived(request: web.Request) -> bool:
    return request.match_info.handler in _LONG_LIVED


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=payloads.dumps(body), status=status, content_type="application/json")


def no_content() -> web.Response:
    return web.Response(status=204)


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-bound `fn(*args)` in the request worker threads."""
    return await asyncio.get_running_loop().run_in_executor(_cpu, fn, *args)


async def bounded(check: Callable[[float], T]) -> T:
    """`check(deadline)` (it raises `schemas.OutOfTime` at the monotonic `deadline`): tried inline
    for INLINE_SECS, then redone in a worker thread under the request's VALIDATION_BUDGET, so one
    tenant's schema cannot stall the event loop for everyone. OutOfTime past the budget."""
    started = time.monotonic()
    try:
        return check(started + INLINE_SECS)
    except schemas.OutOfTime:
        pass
    return await off_loop(check, started + schemas.VALIDATION_BUDGET)


async def read_json(request: web.Request) -> Any:
    """The body as JSON; empty is {}; too large is 413; malformed is 400 (never a 500)."""
    limit = request.app[SETTINGS].max_request_body_size
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body too large (limit {limit} bytes)")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body too large (limit {limit} bytes)") from None
    except (RequestPayloadError, HttpProcessingError):  # e.g. a Content-Encoding the body does not follow
        raise bad_request("invalid request body: it cannot be decoded as its Content-Encoding says") from None
    if len(raw) > LARGE_BODY:
        return await off_loop(parse_json_body, raw)
    return parse_json_body(raw)


async def read_object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid request body: expected a JSON object")
    return body


def header_text(request: web.Request, name: str) -> str | None:
    """A header's value, or 400 when its bytes are not UTF-8 (it would reach SQL and JSON)."""
    value = request.headers.get(name)
    if value is not None and not _utf8(value):
        raise bad_request(f"header {name} is not valid UTF-8")
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # aiohttp keeps undecodable bytes as lone surrogates
        return False
    return True


def _request_id(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a usable one (printable UTF-8, at most 200 characters)."""
    given = request.headers.get("X-Request-Id")
    if given and len(given) <= 200 and given.isprintable() and _utf8(given):
        return given
    return f"{_PREFIX}-{next(_counter):06d}"


def error_body(request: web.Request, err: ApiError) -> dict[str, Any]:
    inner: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.details:
        inner["details"] = err.details
    # top-level "message" too: the SDK reads it there (api.md §2.3 ⚠)
    return {"error": inner, "message": err.message, "request_id": request.get(REQUEST_ID, "")}


def log_fields(request: web.Request) -> dict[str, Any]:
    """`extra=` of a line about a request: its id, and the run, job and attempt it names (only
    computed when such a line is written)."""
    token = request.get(TOKEN)
    run_id = token.run_id if token is not None else request.match_info.get("run_id")
    fields = run_fields(run_id, request.match_info.get("job_id"), token.attempt if token is not None else None)
    fields["request_id"] = request.get(REQUEST_ID, "")
    return fields


@web.middleware
async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in, error envelope out; nothing escapes as a bare 500. Timed for /metrics."""
    rid = _request_id(request)
    request[REQUEST_ID] = rid
    started = time.perf_counter()
    _HTTP.inflight += 1
    try:
        resp = await _answer(request, handler)
    finally:
        _HTTP.inflight -= 1
    resp.headers["X-Request-Id"] = rid
    resp.headers["X-API-Version"] = "v1"
    route = request.match_info.route.resource
    key = (route.canonical if route is not None else "unmatched", resp.status)
    took = _HTTP.took.get(key)
    if took is None:
        took = _HTTP.took[key] = []
    took.append(time.perf_counter() - started)
    return resp


class _HttpFigures:
    """Requests in flight and the durations not yet counted, kept in plain Python per request and
    handed to the metrics once a second (`flush_http_metrics`): a metric write takes a lock and
    touches a file in multiprocess mode, too dear for every request of the trigger path."""

    def __init__(self) -> None:
        self.inflight = 0
        self.took: dict[tuple[str, int], list[float]] = {}
        self.timers: dict[tuple[str, int], Any] = {}


_HTTP = _HttpFigures()


def flush_http_metrics() -> None:
    metrics.HTTP_INFLIGHT.set(_HTTP.inflight)
    took, _HTTP.took = _HTTP.took, {}
    for key, values in took.items():
        timer = _HTTP.timers.get(key)
        if timer is None:
            timer = _HTTP.timers[key] = metrics.HTTP_DURATION.labels(key[0], str(key[1]))
        metrics.observe_many(timer, values)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except Unavailable as exc:
        # the database is unreachable or saturated: a retryable 503, not a bug
        log.warning("database unavailable on %s %s: %s", request.method, request.path, exc, extra=log_fields(request))
        err = ApiError(503, "database unavailable, retry shortly", headers={"Retry-After": "1"})
        resp = json_response(error_body(request, err), 503)
        resp.headers.update(err.headers)
    except Rejected as exc:
        # PostgreSQL refused a value the request carried (out of range, unstorable): the caller's
        # to fix. Paths that write runs translate their own; this is the net under the rest.
        log.info("value refused on %s %s: %s", request.method, request.path, exc, extra=log_fields(request))
        err = ApiError(400, "a value in the request is out of range or cannot be stored")
        resp = json_response(error_body(request, err), 400)
    except ApiError as err:
        resp = json_response(error_body(request, err), err.status)
        resp.headers.update(err.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "route not found", 405: "method not allowed"}.get(exc.status, exc.reason)
        resp = json_response(error_body(request, ApiError(exc.status, message)), exc.status)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path, extra=log_fields(request))
        resp = json_response(error_body(request, ApiError(500, "internal server error", code="internal_error")), 500)
    return resp
