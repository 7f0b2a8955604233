"""Health (api.md §4.1): `/health` and `/health/ready`, never rate-limited, no auth."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from strait_actors import __version__
from strait_actors.api.auth import internal_secret_ok
from strait_actors.api.http import json_response
from strait_actors.api.render import now_ts
from strait_actors.api.state import POOL, STARTED
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
