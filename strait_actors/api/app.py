"""The aiohttp application factory: routes, middlewares, pool lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from strait_actors import metrics
from strait_actors.api import (
    environments,
    events,
    groups,
    health,
    jobs,
    openapi,
    projects,
    run_bundle,
    runs,
    sdk,
    triggers,
)
from strait_actors.api.auth import CALLER, KeyCache, authenticate
from strait_actors.api.deadlines import Deadlines
from strait_actors.api.http import Handler, envelope, flush_http_metrics, is_long_lived
from strait_actors.api.limits import RateLimiter, take_request
from strait_actors.api.router import application
from strait_actors.api.state import (
    BUDGETS,
    COUNTS_DEPTH,
    DEADLINES,
    DSN,
    ENQUEUER,
    FEED,
    HUB,
    JOBS,
    KEYS,
    LIMITER,
    POOL,
    REDIS,
    RUN_TOKENS,
    SDK,
    SENDER,
    SETTINGS,
    STARTED,
)
from strait_actors.api.streams import StreamHub
from strait_actors.errors import ApiError
from strait_actors.metrics_sampler import MetricsSampler
from strait_actors.ratelimits import RedisRateLimits
from strait_actors.settings import Settings
from strait_actors.store.budgets import Budgets
from strait_actors.store.coherence import ConfigFeed
from strait_actors.store.enqueue import Enqueuer
from strait_actors.store.events import Sender
from strait_actors.store.jobs import JobCache
from strait_actors.store.sdk import SdkStore
from strait_actors.store.sql import make_pool

_ACCEPTABLE = ("", "*/*", "application/json", "application/*", "application/x-ndjson", "text/csv")


def check_media_types(request: web.Request, streaming: bool = False) -> None:
    """Accept and Content-Type rules of the JSON group (api.md §2.5); a stream also takes
    `text/event-stream`, what a browser's EventSource sends."""
    accept = request.headers.get("Accept", "")
    if accept not in _ACCEPTABLE:
        kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
        if not any(k in _ACCEPTABLE or (streaming and k == "text/event-stream") for k in kinds):
            raise ApiError(406, "not acceptable: this API answers application/json")
    if request.method in ("POST", "PUT", "PATCH"):
        ctype = request.headers.get("Content-Type")
        has_body = request.content_length not in (None, 0) or request.headers.get("Transfer-Encoding")
        if (ctype is not None or has_body) and (ctype or "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "unsupported media type: send application/json")


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a request passes before its handler, by the plane its path names, in one middleware
    layer (each layer costs every request): `/v1` (`_v1`) or the SDK plane (`sdk.gate`)."""
    path = request.path
    if path.startswith("/v1/"):
        return await _v1(request, handler)
    if path.startswith(sdk.PREFIX):
        return await sdk.gate(request, handler)
    return await handler(request)


async def _v1(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Media types, authentication, the rate limit, REQUEST_TIMEOUT."""
    streaming = is_long_lived(request)
    check_media_types(request, streaming)

    async def admitted() -> web.StreamResponse | None:
        request[CALLER] = await authenticate(request)  # a key lookup is bounded too
        await take_request(request)
        return None if streaming else await handler(request)

    try:
        resp = await request.app[DEADLINES].call(admitted)
    except TimeoutError:
        raise ApiError(503, "request timed out", headers={"Retry-After": "1"}) from None
    if resp is None:  # an SSE stream: its own limits (SSE_MAX_CONN_DURATION_SECS)
        resp = await handler(request)
    return resp


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = make_pool(app[DSN], app[SETTINGS].db_pool_size)
    await pool.open(wait=True, timeout=30)
    app[POOL] = pool
    settings = app[SETTINGS]
    app[SDK] = SdkStore(pool, settings.stale_threshold_secs)
    app[BUDGETS] = Budgets(pool, app[FEED])
    app[SENDER] = Sender(pool)
    redis = None
    if settings.redis_url:
        import redis.asyncio as aioredis

        # a burst of triggers waits for a connection (redis-py's default pool refuses past 100 in use,
        # and a refusal would read as an outage: limits counted elsewhere, the API limiter open)
        redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(settings.redis_url, max_connections=64, timeout=5)
        )
    app[REDIS] = redis
    app[ENQUEUER] = Enqueuer(pool, RedisRateLimits(redis) if redis is not None else None)
    hub = StreamHub(app[DSN], pool, app[FEED], redis)
    await hub.start()
    await app[FEED].start()  # after the hub: it hears the run events too (without Redis)
    app[HUB] = hub
    app[LIMITER] = RateLimiter(
        settings.rate_limit_requests,
        settings.trigger_rate_limit_requests,
        redis,
        settings.auth_failure_limit,
        settings.api_process_count,
    )
    sampler = MetricsSampler(app[DSN], metrics, pool, flush_http_metrics, counts_depth=app[COUNTS_DEPTH])
    sampling = asyncio.ensure_future(sampler.run())
    yield
    sampling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    await hub.stop()
    await app[FEED].stop()
    if redis is not None:
        await redis.aclose()
    await pool.close()


def create_app(settings: Settings, dsn: str, *, counts_depth: bool = True) -> web.Application:
    """The API; `counts_depth`: False in the program's other API processes (`COUNTS_DEPTH`)."""
    app = application(middlewares=[envelope, gate], client_max_size=settings.max_request_body_size)
    app[SETTINGS] = settings
    app[DSN] = dsn
    app[COUNTS_DEPTH] = counts_depth
    app[FEED] = feed = ConfigFeed(dsn)
    app[KEYS] = KeyCache(feed)
    app[JOBS] = JobCache(feed)
    app[STARTED] = time.monotonic()
    app[DEADLINES] = Deadlines(settings.request_timeout_secs)
    app[RUN_TOKENS] = sdk.TokenCache()
    app.cleanup_ctx.append(_pool_ctx)
    # /v1/runs/dlq is registered before /v1/runs/{run_id} (runs.routes keeps that order)
    for table in (
        health.routes,
        projects.routes,
        jobs.routes,
        triggers.routes,
        runs.routes,
        run_bundle.routes,
        sdk.routes,
        events.routes,
        environments.routes,
        groups.routes,
    ):
        app.add_routes(table)
    openapi.attach(app)  # last: the document describes every route added above
    return app
