"""Health and metrics (api.md §4.1): `/health` and `/health/ready`, never rate-limited, no auth;
`/metrics`, the internal secret's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from strait_actors import __version__
from strait_actors.api.auth import internal_secret_ok
from strait_actors.api.http import json_response
from strait_actors.api.render import now_ts
from strait_actors.api.state import POOL, STARTED
from strait_actors.errors import unauthorized
from strait_actors.store.sql import ping

routes = web.RouteTableDef()

# the database's answer is awaited this long, so /health answers within a second even when the
# database hangs (Kubernetes' default probe timeout is 1 s); a slower database reads as down
PING_SECS = 0.8


async def _db_ok(request: web.Request) -> bool:
    return await ping(request.app[POOL], timeout=PING_SECS)


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"status": "ok", "version": __version__, "timestamp": now_ts()}
    if internal_secret_ok(request):
        db = await _db_ok(request)
        body.update(
            edition="self-hosted",
            uptime_seconds=int(time.monotonic() - request.app[STARTED]),
            subsystems={"database": "ok" if db else "down"},
        )
        if not db:
            body["status"] = "degraded"
    return json_response(body)


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    if await _db_ok(request):
        return json_response({"status": "ready"})
    return json_response({"status": "not_ready"}, 503)


@routes.get("/metrics")
async def scrape(request: web.Request) -> web.Response:
    """Every process of this program's series (`strait_actors.metrics`); Accept exactly
    `application/json` gets `{"content_type", "text"}` (the official client's `list_metrics`)."""
    from strait_actors import metrics  # after runtime.metrics_dir chose the multiprocess directory

    if not internal_secret_ok(request):
        raise unauthorized("invalid or missing internal secret")
    text = await asyncio.to_thread(metrics.exposition)  # files of every process: off the event loop
    if request.headers.get("Accept", "").strip() == "application/json":
        return json_response({"content_type": metrics.CONTENT_TYPE, "text": text.decode()})
    return web.Response(body=text, headers={"Content-Type": metrics.CONTENT_TYPE})
