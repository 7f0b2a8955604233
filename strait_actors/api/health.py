"""Health and metrics (api.md §4.1): `/health` and `/health/ready`, never rate-limited, no auth;
`/metrics`, the internal secret's.

`/health/ready` is ready when the database answers and holds every migration this version
carries. Without the internal secret it says only that (`{"status": "ready"}` or 503
`{"status": "not_ready"}`); with it, each component: the database, the migrations, Redis (when
REDIS_URL is set) and every worker process with its actors (their Beacon rows). Redis and the
workers are reported but do not make the process unready: the API takes triggers without either
(runs wait durably in PostgreSQL; live updates and rate limits fall back), and a probe that failed
every API process while Redis is down would take the whole service out of its load balancer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NoReturn

from aiohttp import web
from redis.exceptions import RedisError

from strait_actors import __version__
from strait_actors.api.auth import internal_secret_ok
from strait_actors.api.http import json_response
from strait_actors.api.render import now_ts, ts
from strait_actors.api.state import POOL, REDIS, SETTINGS, STARTED
from strait_actors.errors import unauthorized
from strait_actors.metrics_sampler import metrics_response
from strait_actors.store import db, workers
from strait_actors.store.errors import StoreError
from strait_actors.store.sql import Row, ping

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
        db_up = await _db_ok(request)
        body.update(
            edition="self-hosted",
            uptime_seconds=int(time.monotonic() - request.app[STARTED]),
            subsystems={"database": "ok" if db_up else "down"},
        )
        if not db_up:
            body["status"] = "degraded"
    return json_response(body)


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    if not internal_secret_ok(request):
        state = await db.migration_state(request.app[POOL], PING_SECS)
        ok = state is not None and not state.pending
        return json_response({"status": "ready"} if ok else {"status": "not_ready"}, 200 if ok else 503)
    state, redis, beats = await asyncio.gather(
        db.migration_state(request.app[POOL], PING_SECS), _redis(request), _workers(request)
    )
    ok = state is not None and not state.pending
    body = {
        "status": "ready" if ok else "not_ready",
        "version": __version__,
        "timestamp": now_ts(),
        "components": {
            "database": {"status": "ok" if state is not None else "down"},
            "migrations": _migrations(state),
            "redis": redis,
            "workers": beats,
        },
    }
    return json_response(body, 200 if ok else 503)


def _migrations(state: db.MigrationState | None) -> dict[str, Any]:
    packaged = len(db.packaged_names())
    if state is None:
        return {"status": "unknown", "packaged": packaged}
    status = "pending" if state.pending else "ahead" if state.unknown else "current"
    out: dict[str, Any] = {"status": status, "applied": state.applied, "packaged": packaged}
    if state.pending:
        out["pending"] = state.pending
    if state.unknown:
        out["unknown"] = state.unknown  # applied by a newer version: this one still serves
    return out


async def _redis(request: web.Request) -> dict[str, Any]:
    client = request.app[REDIS]
    if client is None:
        return {"status": "not_configured"}
    try:
        async with asyncio.timeout(PING_SECS):
            await client.ping()
    except (RedisError, OSError, TimeoutError):
        return {"status": "down"}
    return {"status": "ok"}


def _process(row: Row) -> dict[str, Any]:
    return {
        "worker_id": row["worker_id"],
        "hostname": row["hostname"],
        "pid": row["pid"],
        "alive": row["alive"],
        "started_at": ts(row["started_at"]),
        "seen_at": ts(row["seen_at"]),
        "actors": row["actors"],
    }


async def _workers(request: web.Request) -> dict[str, Any]:
    """Each worker process's last beat: alive when seen within STALE_THRESHOLD_SECS. `ok` when some
    process is alive and every live one has all its actors up; `degraded` when a live one has an
    actor down (dead, or waiting out its restart); `none` when no process is alive."""
    try:
        async with asyncio.timeout(PING_SECS):
            rows = await workers.beats(request.app[POOL], request.app[SETTINGS].stale_threshold_secs)
    except (StoreError, TimeoutError):
        return {"status": "unknown"}
    live = [r for r in rows if r["alive"]]
    if not live:
        status = "none"
    elif all(v == "alive" for r in live for v in r["actors"].values()):
        status = "ok"
    else:
        status = "degraded"
    return {"status": status, "alive": len(live), "processes": [_process(r) for r in rows]}


@routes.get("/metrics")
async def scrape(request: web.Request) -> web.Response:
    return await metrics_response(request, request.app[SETTINGS].internal_secret, json_response, _refused)


def _refused() -> NoReturn:
    raise unauthorized("invalid or missing internal secret")
