"""The domain model: typed records of runs as they are requested, enqueued, claimed and decided.

The store reads rows into these by column name (psycopg's `class_row`/`kwargs_row`); the API and
the actors build and pass them. Actor messages live in `messages.py` and only carry these.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from strait_actors import cron, fsm, ids


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What a caller asks of one run (a validated trigger body or bulk item, or a cron tick)."""

    payload: Any = field(default_factory=dict)  # raw; canonicalised by the caller into payload text
    tags: dict[str, str] = field(default_factory=dict)
    scheduled_at: datetime | None = None
    priority: int = 0
    dry_run: bool = False
    ttl_secs: int | None = None
    concurrency_key: str | None = None
    debounce_key: str | None = None
    batch_key: str | None = None
    idempotency_key: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunOrigin:
    """What is the same for every run of one trigger: the job row, who asked, and when."""

    job: Mapping[str, Any]
    actor: str | None
    now: datetime
    trace: dict[str, str] = field(default_factory=dict)
    batch_id: uuid.UUID | None = None
    triggered_by: str = "manual"
    project_tz: str | None = None  # the project's time zone: a job's execution window without its own


@dataclass(frozen=True, slots=True)
class NewRun:
    """One run to enqueue, fully decided (status, expiry, merged tags and metadata)."""

    id: uuid.UUID
    job_id: uuid.UUID
    project_id: str
    status: str
    priority: int
    payload: str  # canonical JSON text
    payload_hash: str
    tags: dict[str, str]
    metadata: dict[str, str]
    triggered_by: str
    scheduled_at: datetime | None
    ttl_secs: float | None  # None: the run never expires
    idempotency_key: str | None
    concurrency_key: str | None
    batch_id: uuid.UUID | None
    job_version: int
    job_version_id: str | None
    created_by: str | None
    debug_mode: bool = False
    window_key: str | None = None  # a debounce or batch window's run: the triggers that share it (`windows`)


MAX_DEPENDENCY_KEY = 256


def _metadata(job: Any, req: RunRequest, origin: RunOrigin) -> dict[str, str]:
    """The job's default metadata, the request's, the trace headers; and the payload's top-level
    `dependency_key` (a string), which matches runs across dependent jobs (engine.md §2.8)."""
    out = {**(job["default_run_metadata"] or {}), **req.metadata, **origin.trace}
    if isinstance(req.payload, dict):
        key = req.payload.get("dependency_key")
        if isinstance(key, str) and 0 < len(key) <= MAX_DEPENDENCY_KEY:
            out["dependency_key"] = key
    return out


def new_run(origin: RunOrigin, req: RunRequest, payload: str, payload_hash: str, key: str | None) -> NewRun:
    """A run of `origin.job` as `req` asks: delayed when scheduled ahead or asked outside the job's
    execution window (until its next opening, engine.md §2.6), the job's TTL rule unless
    the request gives one (`effective_run_ttl_secs` is the schema's one copy of that rule); a TTL
    of 0 means none."""
    job = origin.job
    at = req.scheduled_at
    if job.get("execution_window_cron"):  # outside its window, a run waits for the next opening
        ref = at if at is not None and at > origin.now else origin.now
        at = cron.window_opening(job["execution_window_cron"], job["timezone"] or origin.project_tz, ref) or at
    delayed = at is not None and at > origin.now
    ttl = req.ttl_secs if req.ttl_secs is not None else job["effective_run_ttl_secs"]
    return NewRun(
        id=ids.uuid7(),
        job_id=job["id"],
        project_id=job["project_id"],
        status=fsm.S.DELAYED if delayed else fsm.S.QUEUED,
        priority=req.priority,
        payload=payload,
        payload_hash=payload_hash,
        tags={**job["tags"], **req.tags} if job["tags"] else req.tags,
        metadata=_metadata(job, req, origin),
        triggered_by=origin.triggered_by,
        scheduled_at=at if delayed else None,
        ttl_secs=float(ttl) if ttl else None,
        idempotency_key=key,
        concurrency_key=req.concurrency_key,
        batch_id=origin.batch_id,
        job_version=job["version"],
        job_version_id=job["version_id"],
        created_by=origin.actor,
    )


@dataclass(frozen=True, slots=True)
class Receipt:
    """What enqueueing answers for one run: the run that holds it, and whether a key matched."""

    id: uuid.UUID
    status: str
    idempotency_hit: bool


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run claimed under a lease, with the job settings its dispatch needs (read by column name)."""

    id: str
    job_id: str
    project_id: str
    attempt: int
    payload: str  # JSON text, POSTed as it is
    lease_id: str
    expires_at: datetime | None
    previous_error: str | None
    endpoint_url: str
    timeout_secs: int
    max_attempts: int
    retry_strategy: str | None
    retry_delays_secs: Sequence[int] | None
    retry_priority_boost: int
    signing_secret: str | None
    traceparent: str | None = None  # W3C trace context captured at trigger, forwarded on dispatch
    tracestate: str | None = None
    resume_event_key: str | None = None  # what resumed a waiting run into this dispatch
    last_checkpoint: str | None = None  # newest checkpoint's state (JSON), for retried and resumed runs
    checkpoint_at: datetime | None = None
    fallback_endpoint_url: str | None = None  # engine.md §3.5: where a transient failure is sent again
    created_at: datetime | None = None  # when the run was made (end-to-end latency, /metrics)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one dispatch attempt decided, ready for the fenced batch write."""

    run_id: str
    attempt: int
    lease_id: str
    to_status: str
    result: str | None  # JSON text
    error: str | None
    error_class: str | None
    retry_delay: float
    priority_boost: int
    http_status: int = 0  # the endpoint's answer (0: none), for /metrics
