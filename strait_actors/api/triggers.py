"""Triggering runs: single, bulk and dry-run (api.md §4.3.6-4.3.7).

Validation and the payload's canonical form are the API's; what a run is (`model.new_run`) and
how it is enqueued (`store.enqueue`) are shared with the actors that create runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from strait_actors import ids, schemas, windows
from strait_actors.api import render
from strait_actors.api.auth import require
from strait_actors.api.http import bounded, header_text, json_response, read_object
from strait_actors.api.jobs import load_job
from strait_actors.api.limits import counts_runs, take_triggers
from strait_actors.api.state import BUDGETS, ENQUEUER, JOBS, SETTINGS
from strait_actors.api.validation import validate_bulk, validate_trigger
from strait_actors.errors import ApiError, bad_request, conflict, not_found
from strait_actors.model import NewRun, Receipt, RunOrigin, RunRequest, new_run
from strait_actors.payloads import PayloadError, canonical_payload, clean_str, loads
from strait_actors.store.budgets import OverBudget
from strait_actors.store.errors import MissingReference, RateLimited
from strait_actors.store.sql import Row

routes = web.RouteTableDef()


def check_job(job: Row) -> None:
    if job["project_paused"]:
        raise conflict("project is paused -- resume it before triggering new runs")
    if not job["enabled"]:
        raise bad_request("job is disabled")
    if job["paused"]:
        raise conflict("job is paused -- resume it before triggering new runs")


def _check_payloads(validator: Any, payloads: list[Any], deadline: float, bulk: bool) -> None:
    """Every payload against the job's schema, all before one deadline; 400 at the first failure."""
    for i, payload in enumerate(payloads):
        prefix = f"item {i}: " if bulk else ""
        try:
            error = schemas.first_error(validator, payload, deadline)
        except schemas.OutOfTime:
            raise
        except schemas.SchemaUnusable as exc:
            unusable = f"the job's payload_schema is unusable: {exc}"
            raise bad_request(clean_str(f"{prefix}payload cannot be validated: {unusable}")) from None
        if error is not None:  # the message names the payload's keys and values: clean them for JSON
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise bad_request(clean_str(f"{prefix}payload validation failed: {where}: {error.message}"))


async def check_payloads(job: Row, payloads: list[Any], bulk: bool = False) -> None:
    """Schema validation off the event loop when it is not cheap (`http.bounded`)."""
    if not job["payload_schema"]:
        return
    validator = schemas.job_validator(job, "payload_schema")
    try:
        await bounded(lambda deadline: _check_payloads(validator, payloads, deadline, bulk))
    except schemas.OutOfTime:
        raise bad_request(
            f"payload cannot be validated: the job's payload_schema took longer than {schemas.VALIDATION_BUDGET} s"
        ) from None


def _header_key(request: web.Request) -> str | None:
    key = header_text(request, "X-Idempotency-Key") or header_text(request, "Idempotency-Key")
    if key is not None and len(key) > 256:
        raise bad_request("idempotency key must be at most 256 characters")
    return key or None


def _trace_metadata(request: web.Request) -> dict[str, str]:
    """W3C trace headers are copied into every run's metadata (and forwarded on dispatch)."""
    found = {
        key: header_text(request, name) for name, key in (("Traceparent", "traceparent"), ("Tracestate", "tracestate"))
    }
    return {key: value for key, value in found.items() if value}


async def check_budget(request: web.Request, project_id: str) -> None:
    """Over its daily cost budget, a project's triggers are refused (engine.md §9.1)."""
    try:
        await request.app[BUDGETS].check_daily(project_id)
    except OverBudget as exc:
        raise ApiError(429, str(exc), headers={"Retry-After": "3600"}) from None


async def enqueue(request: web.Request, job: Row, runs: list[NewRun]) -> list[Receipt]:
    await check_budget(request, job["project_id"])
    quota = await request.app[BUDGETS].quota(job["project_id"])  # the same second-long copy
    try:
        return await request.app[ENQUEUER].enqueue(job, runs, quota)
    except MissingReference:
        # deleted after this process cached it (the cache holds a job for a second)
        request.app[JOBS].forget(job["id"])
        raise not_found("job not found") from None
    except RateLimited as exc:
        raise ApiError(429, str(exc), code="enqueue_throttled", headers={"Retry-After": str(exc.retry_after)}) from None


async def _window_tz(request: web.Request, job: Row) -> str | None:
    """The zone of a job's execution window when the job names none: its project's (a quota's)."""
    if not job["execution_window_cron"] or job["timezone"]:
        return None
    quota = await request.app[BUDGETS].quota(job["project_id"])
    return quota["timezone"] if quota else None


def _new_run(origin: RunOrigin, t: RunRequest, key: str | None, index: int | None = None) -> tuple[NewRun, str]:
    which = windows.kind(origin.job)
    try:
        payload, digest = canonical_payload(t.payload)
        if which == windows.BATCH:
            windows.check_batch_item(payload)
    except PayloadError as exc:
        raise bad_request(str(exc) if index is None else f"invalid trigger item for item {index}: {exc}") from None
    if which is None:
        return new_run(origin, t, payload.decode(), digest, key), digest
    _check_windowed(t, key, index)
    return windows.windowed_run(origin, t, payload.decode(), digest), digest


def _check_windowed(t: RunRequest, key: str | None, index: int | None) -> None:
    """What a trigger of a job with a debounce or batch window may not ask (README)."""
    problem = None
    if key is not None:
        problem = "an idempotency key cannot be used with a job's debounce or batch window (triggers share its runs)"
    elif t.scheduled_at is not None:
        problem = "scheduled_at cannot be used with a job's debounce or batch window (the window decides when)"
    if problem is not None:
        raise bad_request(problem if index is None else f"invalid trigger item for item {index}: {problem}")


def _dry_run(job: Row, run: NewRun, digest: str, t: RunRequest) -> web.Response:
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
        "payload": loads(run.payload),  # its canonical form: what would be stored and sent
    }
    base = run.scheduled_at or datetime.now(UTC)
    if run.scheduled_at is not None:
        body["scheduled_at"] = render.ts(run.scheduled_at)
    if run.ttl_secs:  # no TTL, no expiry
        body["expires_at"] = render.ts(base + timedelta(seconds=run.ttl_secs))
    return json_response(body)


@routes.post("/v1/jobs/{job_id}/trigger")
@counts_runs
async def trigger(request: web.Request) -> web.Response:
    await take_triggers(request, 1)  # first: a dry run or a refused trigger costs validation too
    who = require(request, "jobs:trigger")
    job = await load_job(request, cached=True)
    body = await read_object(request)
    now = datetime.now(UTC)
    t = validate_trigger(body, now=now)
    check_job(job)
    await check_payloads(job, [t.payload])
    origin = RunOrigin(job, who.actor or None, now, _trace_metadata(request), project_tz=await _window_tz(request, job))
    run, digest = _new_run(origin, t, _header_key(request) or t.idempotency_key)
    if t.dry_run:
        return _dry_run(job, run, digest, t)
    (receipt,) = await enqueue(request, job, [run])
    if receipt.idempotency_hit:
        return json_response({"id": str(receipt.id), "status": receipt.status, "idempotency_hit": True})
    return json_response(
        {"id": str(receipt.id), "status": receipt.status, "payload_hash": digest, "idempotency_hit": False}, 201
    )


@routes.post("/v1/jobs/{job_id}/trigger/bulk")
@counts_runs
async def trigger_bulk(request: web.Request) -> web.Response:
    await take_triggers(request, 1)  # the request itself, refused or not; its other items below
    who = require(request, "jobs:trigger")
    job = await load_job(request, cached=True)
    items = validate_bulk(await read_object(request), max_items=request.app[SETTINGS].max_bulk_trigger_items)
    await take_triggers(request, len(items) - 1)
    now = datetime.now(UTC)
    batch_id = ids.uuid7()
    inputs = [validate_trigger(item, now=now, index=i) for i, item in enumerate(items)]
    check_job(job)
    await check_payloads(job, [t.payload for t in inputs], bulk=True)
    origin = RunOrigin(
        job, who.actor or None, now, _trace_metadata(request), batch_id, project_tz=await _window_tz(request, job)
    )
    runs = [_new_run(origin, t, t.idempotency_key, i)[0] for i, t in enumerate(inputs)]
    receipts = await enqueue(request, job, runs)
    results = [{"id": str(r.id), "status": r.status, "idempotency_hit": r.idempotency_hit} for r in receipts]
    created = sum(1 for r, run in zip(receipts, runs, strict=True) if r.id == run.id)
    return json_response({"batch_id": str(batch_id), "results": results, "total": len(runs), "created": created}, 201)
