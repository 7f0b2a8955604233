"""Triggering runs: single, bulk and dry-run (api.md §4.3.6-4.3.7).

The common path takes no lock: runs go through the shared-INSERT batcher and an
idempotency key is enforced by a unique index. Only a job with an admission limit
(dedup window, rate limit) takes its job row lock, in a transaction of its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import psycopg
from aiohttp import web

from strait_actors import ids
from strait_actors.api import render
from strait_actors.api.auth import require
from strait_actors.api.batcher import Receipt, resolve_conflicts
from strait_actors.api.http import json_response, read_object
from strait_actors.api.jobs import load_job
from strait_actors.api.limits import take_triggers
from strait_actors.api.state import BATCHER, JOBS, POOL, SETTINGS
from strait_actors.api.validation import TriggerInput, canonical_payload, validate_bulk, validate_trigger
from strait_actors.errors import ApiError, bad_request, conflict, not_found
from strait_actors.store import runs as store
from strait_actors.store.runs import NewRun
from strait_actors.store.sql import Row, q

routes = web.RouteTableDef()
_validators: dict[tuple[uuid.UUID, int], Any] = {}


def _check_job(job: Row) -> None:
    if not job["enabled"]:
        raise bad_request("job is disabled")
    if job["paused"]:
        raise conflict("job is paused -- resume it before triggering new runs")


def _check_payload(job: Row, payload: Any, prefix: str = "") -> None:
    schema = job["payload_schema"]
    if not schema:
        return
    key = (job["id"], job["version"])
    validator = _validators.get(key)
    if validator is None:
        validator = jsonschema.validators.validator_for(schema)(schema)
        if len(_validators) > 1000:
            _validators.clear()
        _validators[key] = validator
    error = jsonschema.exceptions.best_match(validator.iter_errors(payload))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise bad_request(f"{prefix}payload validation failed: {where}: {error.message}")


def _header_key(request: web.Request) -> str | None:
    key = request.headers.get("X-Idempotency-Key") or request.headers.get("Idempotency-Key")
    if key is not None and len(key) > 256:
        raise bad_request("idempotency key must be at most 256 characters")
    return key or None


def _trace_metadata(request: web.Request) -> dict[str, str]:
    """W3C trace headers are copied into every run's metadata (and forwarded on dispatch)."""
    return {
        key: request.headers[header]
        for header, key in (("Traceparent", "traceparent"), ("Tracestate", "tracestate"))
        if request.headers.get(header)
    }


@dataclass(frozen=True, slots=True)
class TriggerContext:
    """What is the same for every run of one trigger request."""

    job: Row
    actor: str | None
    trace: dict[str, str]
    now: datetime
    batch_id: uuid.UUID | None = None


def new_run(ctx: TriggerContext, t: TriggerInput, key: str | None) -> tuple[NewRun, str]:
    job = ctx.job
    payload, digest = canonical_payload(t.payload)
    ttl = t.ttl_secs if t.ttl_secs is not None else job["run_ttl_secs"] or job["timeout_secs"] + 60
    delayed = t.scheduled_at is not None and t.scheduled_at > ctx.now
    metadata = {**(job["default_run_metadata"] or {}), **t.metadata, **ctx.trace}
    tags = {**job["tags"], **t.tags} if job["tags"] else t.tags
    run = NewRun(
        id=ids.uuid7(),
        job_id=job["id"],
        project_id=job["project_id"],
        status="delayed" if delayed else "queued",
        priority=t.priority,
        payload=payload.decode(),
        payload_hash=digest,
        tags=tags,
        metadata=metadata,
        triggered_by="manual",
        scheduled_at=t.scheduled_at if delayed else None,
        ttl_secs=float(ttl),
        idempotency_key=key,
        concurrency_key=t.concurrency_key,
        batch_id=ctx.batch_id,
        job_version=job["version"],
        job_version_id=job["version_id"],
        created_by=ctx.actor,
    )
    return run, digest


async def enqueue(request: web.Request, job: Row, runs: list[NewRun]) -> list[Receipt]:
    try:
        if not (job["dedup_window_secs"] or job["rate_limit_max"]):
            receipts: list[Receipt] = await request.app[BATCHER].submit(runs)
            return receipts
        return await _admitted(request, job, runs)
    except psycopg.errors.ForeignKeyViolation:
        # deleted after this process cached it (the cache holds a job for a second)
        request.app[JOBS].forget(job["id"])
        raise not_found("job not found") from None


async def _admitted(request: web.Request, job: Row, runs: list[NewRun]) -> list[Receipt]:
    """Dedup window and job rate limit, serialised on the job row (engine.md §2.5)."""
    async with request.app[POOL].connection() as conn, conn.transaction():
        await conn.execute(q("lock_job"), {"id": job["id"]})
        if job["rate_limit_max"]:
            cur = await conn.execute(
                q("count_recent_runs"), {"job_id": job["id"], "window": job["rate_limit_window_secs"] or 60}
            )
            row = await cur.fetchone()
            if row is not None and next(iter(row.values())) + len(runs) > job["rate_limit_max"]:
                raise ApiError(429, "job rate limit exceeded", code="enqueue_throttled", headers={"Retry-After": "5"})
        out: list[Receipt | None] = [None] * len(runs)
        fresh: list[tuple[int, NewRun]] = []
        for i, run in enumerate(runs):
            if job["dedup_window_secs"]:
                cur = await conn.execute(
                    q("recent_run_with_payload"),
                    {"job_id": job["id"], "payload_hash": run.payload_hash, "window": job["dedup_window_secs"]},
                )
                hit = await cur.fetchone()
                if hit is not None:
                    out[i] = Receipt(hit["id"], hit["status"], False)
                    continue
            fresh.append((i, run))
        new = [r for _, r in fresh]
        inserted = await store.insert_runs(conn, new) if new else {}
        for (i, _), receipt in zip(fresh, await resolve_conflicts(conn, new, inserted), strict=True):
            out[i] = receipt
    return [r for r in out if r is not None]


def _dry_run(job: Row, run: NewRun, digest: str, t: TriggerInput) -> web.Response:
    body: dict[str, Any] = {
        "job": {
            "id": str(job["id"]),
            "name": job["name"],
            "slug": job["slug"],
            "execution_mode": job["execution_mode"],
            "queue": job["queue_name"],
            "timeout_secs": job["timeout_secs"],
            "max_attempts": job["max_attempts"],
            "version": job["version"],
            "version_id": job["version_id"],
        },
        "payload_hash": digest,
        "payload": t.payload if t.payload is not None else {},
    }
    base = run.scheduled_at or datetime.now(UTC)
    if run.scheduled_at is not None:
        body["scheduled_at"] = render.ts(run.scheduled_at)
    body["expires_at"] = render.ts(base + timedelta(seconds=run.ttl_secs))
    return json_response(body)


@routes.post("/v1/jobs/{job_id}/trigger")
async def trigger(request: web.Request) -> web.Response:
    who = require(request, "jobs:trigger")
    job = await load_job(request, cached=True)
    body = await read_object(request)
    now = datetime.now(UTC)
    t = validate_trigger(body, now=now)
    _check_job(job)
    _check_payload(job, t.payload)
    ctx = TriggerContext(job, who.actor or None, _trace_metadata(request), now)
    run, digest = new_run(ctx, t, _header_key(request) or t.idempotency_key)
    if t.dry_run:
        return _dry_run(job, run, digest, t)
    await take_triggers(request, 1)
    (receipt,) = await enqueue(request, job, [run])
    if receipt.idempotency_hit:
        return json_response({"id": str(receipt.id), "status": receipt.status, "idempotency_hit": True})
    return json_response(
        {"id": str(receipt.id), "status": receipt.status, "payload_hash": digest, "idempotency_hit": False}, 201
    )


@routes.post("/v1/jobs/{job_id}/trigger/bulk")
async def trigger_bulk(request: web.Request) -> web.Response:
    who = require(request, "jobs:trigger")
    job = await load_job(request, cached=True)
    items = validate_bulk(await read_object(request), max_items=request.app[SETTINGS].max_bulk_trigger_items)
    now = datetime.now(UTC)
    batch_id = ids.uuid7()
    inputs = [validate_trigger(item, now=now, index=i) for i, item in enumerate(items)]
    _check_job(job)
    for i, t in enumerate(inputs):
        _check_payload(job, t.payload, prefix=f"item {i}: ")
    ctx = TriggerContext(job, who.actor or None, _trace_metadata(request), now, batch_id)
    runs = [new_run(ctx, t, t.idempotency_key)[0] for t in inputs]
    await take_triggers(request, len(runs))
    receipts = await enqueue(request, job, runs)
    results = [{"id": str(r.id), "status": r.status, "idempotency_hit": r.idempotency_hit} for r in receipts]
    created = sum(1 for r, run in zip(receipts, runs, strict=True) if r.id == run.id)
    return json_response({"batch_id": str(batch_id), "results": results, "total": len(runs), "created": created}, 201)
