"""Resources as the contract emits them (api.md §3): omit empty optionals, RFC 3339 UTC with Z."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from strait_actors.store.jobs import COLUMNS as JOB_COLUMNS

_ZERO = timedelta(0)


def ts(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with microseconds and Z (isoformat: a third cheaper than strftime, and the
    year always four digits)."""
    if value is None:
        return None
    if value.utcoffset() != _ZERO:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Go's omitempty: None, "" and empty maps/lists are left out."""
    if value is None or value == "" or value == {} or value == []:
        return
    out[key] = str(value) if key.endswith("_id") or key in ("id", "continuation_of") else value


def project(row: dict[str, Any]) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "org_id": row["org_id"],
        "name": row["name"],
        "paused": row["paused"],  # project pause (migration 0007): additive to api.md §3.1
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }
    if row.get("paused_at"):
        out["paused_at"] = ts(row["paused_at"])
    _put(out, "pause_reason", row.get("pause_reason"))
    return out


def environment(row: dict[str, Any]) -> dict[str, Any]:
    """An environment (EXTRA): its variables always (an empty map too), slug and description when set."""
    out: dict[str, Any] = {"id": str(row["id"]), "project_id": row["project_id"], "name": row["name"]}
    _put(out, "slug", row.get("slug"))
    _put(out, "description", row.get("description"))
    out.update(variables=row["variables"], created_at=ts(row["created_at"]), updated_at=ts(row["updated_at"]))
    return out


def job_group(row: dict[str, Any]) -> dict[str, Any]:
    """A job group (EXTRA)."""
    out: dict[str, Any] = {"id": str(row["id"]), "project_id": row["project_id"], "name": row["name"]}
    _put(out, "description", row.get("description"))
    out.update(created_at=ts(row["created_at"]), updated_at=ts(row["updated_at"]))
    return out


# Always emitted (below), never emitted (the signing secret), else emitted when set: the rest of
# the job columns, so a column added to the store shows up here without a second list.
_JOB_ALWAYS = frozenset(
    {
        "name",
        "slug",
        "max_attempts",
        "timeout_secs",
        "retry_priority_boost",
        "enabled",
        "version_policy",
        "cron_overlap_policy",
        "execution_mode",
        "queue_name",
        "signing_secret",
    }
)
_JOB_FIELDS = (*(c for c in JOB_COLUMNS if c not in _JOB_ALWAYS), "pause_reason", "created_by", "updated_by")


def job(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "project_id": row["project_id"],
        "name": row["name"],
        "slug": row["slug"],
    }
    for key in _JOB_FIELDS:
        _put(out, key, row.get(key))
    out.update(
        max_attempts=row["max_attempts"],
        timeout_secs=row["timeout_secs"],
        retry_priority_boost=row["retry_priority_boost"],
        enabled=row["enabled"],
        paused=row["paused"],
        version=row["version"],
        version_id=row["version_id"],
        version_policy=row["version_policy"],
        cron_overlap_policy=row["cron_overlap_policy"],
        rate_limit_keys=row.get("rate_limit_keys") or [],
        has_dependencies=bool(row.get("has_dependencies")),
        execution_mode=row["execution_mode"],
        queue=row["queue_name"],
        queue_name=row["queue_name"],
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
    )
    if row.get("paused_at"):
        out["paused_at"] = ts(row["paused_at"])
    if row.get("project_paused"):
        out["project_paused"] = True  # its project is paused (migration 0007): it runs nothing either
    return out


def dependency(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "job_id": str(row["job_id"]),
        "depends_on_job_id": str(row["depends_on_job_id"]),
        "condition": row["condition"],
        "created_at": ts(row["created_at"]),
    }


_RUN_TIMES = ("scheduled_at", "started_at", "finished_at", "heartbeat_at", "next_retry_at", "expires_at")
_RUN_OPTIONAL = (
    "error",
    "error_class",
    "parent_run_id",
    "continuation_of",
    "workflow_step_run_id",
    "idempotency_key",
    "concurrency_key",
    "batch_id",
    "job_version_id",
    "created_by",
    "replayed_run_id",
)


def run(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "job_id": str(row["job_id"]),
        "project_id": row["project_id"],
        "status": row["status"],
        "attempt": row["attempt"],
        "payload": row["payload"],
        "tags": row["tags"],
        "metadata": row["metadata"],
        "triggered_by": row["triggered_by"],
        "priority": row["priority"],
        "lineage_depth": row["lineage_depth"],
        "job_version": row["job_version"],
        "debug_mode": row["debug_mode"],
        "execution_mode": row["execution_mode"],
        "queue_name": row["queue_name"],
        "created_at": ts(row["created_at"]),
    }
    if row.get("result") is not None:
        out["result"] = row["result"]
    for key in _RUN_OPTIONAL:
        _put(out, key, row.get(key))
    for key in _RUN_TIMES:
        if row.get(key) is not None:
            out[key] = ts(row[key])
    if "finished_at" in out:
        out["completed_at"] = out["finished_at"]  # the SDK's model name (api.md §3.3)
    return out


def run_event(row: dict[str, Any]) -> dict[str, Any]:
    return _record(row, ("type", "level", "message", "data"))


def job_version(row: dict[str, Any]) -> dict[str, Any]:
    snap = dict(row["snapshot"])
    keep = (
        "name",
        "slug",
        "description",
        "cron",
        "payload_schema",
        "tags",
        "endpoint_url",
        "fallback_endpoint_url",
        "max_attempts",
        "timeout_secs",
        "webhook_url",
        "run_ttl_secs",
    )
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "job_id": str(row["job_id"]),
        "version": row["version"],
        "version_id": row["version_id"],
        "backwards_compatible": row["backwards_compatible"],
    }
    for key in keep:
        _put(out, key, snap.get(key))
    out["created_at"] = ts(row["created_at"])
    return out


def api_key(row: dict[str, Any], raw_key: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "project_id": row["project_id"],
        "name": row["name"],
        "key_prefix": row["key_prefix"],
        "scopes": list(row["scopes"]),
        "created_at": ts(row["created_at"]),
    }
    if raw_key is not None:
        out["key"] = raw_key
    if row.get("expires_at"):
        out["expires_at"] = ts(row["expires_at"])
    if row.get("revoked_at"):
        out["revoked_at"] = ts(row["revoked_at"])
    return out


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(
    row: dict[str, Any],
    plain: tuple[str, ...],
    *,
    ids: tuple[str, ...] = ("id", "run_id"),
    optional: tuple[str, ...] = (),
    times: tuple[str, ...] = ("created_at",),
) -> dict[str, Any]:
    """A row of the run's satellite tables as the contract renders it: `ids` as strings, `plain`
    as stored, `optional` only when set, `times` as RFC 3339."""
    out: dict[str, Any] = {key: str(row[key]) for key in ids}
    for key in plain:
        out[key] = row[key]
    for key in optional:
        if row.get(key) is not None:
            out[key] = row[key]
    for key in times:
        out[key] = ts(row[key])
    return out


def checkpoint(row: dict[str, Any]) -> dict[str, Any]:
    return _record(row, ("sequence", "source", "state"))


def output(row: dict[str, Any]) -> dict[str, Any]:
    return _record(row, ("output_key", "value"), optional=("schema",))


def state(row: dict[str, Any]) -> dict[str, Any]:
    return _record(row, ("state_key", "value"), ids=("run_id",), times=("updated_at",))


def usage(row: dict[str, Any]) -> dict[str, Any]:
    return _record(row, ("provider", "model", "prompt_tokens", "completion_tokens", "total_tokens", "cost_microusd"))


def tool_call(row: dict[str, Any]) -> dict[str, Any]:
    return _record(row, ("tool_name", "status"), optional=("input", "output", "duration_ms"))


_TRIGGER_OPTIONAL = (
    "environment_id",
    "workflow_run_id",
    "workflow_step_run_id",
    "job_run_id",
    "error",
    "notify_url",
    "sent_by",
)


def event_trigger(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(row["id"]),
        "event_key": row["event_key"],
        "project_id": row["project_id"],
        "source_type": row["source_type"],
        "status": row["status"],
        "timeout_secs": row["timeout_secs"],
        "trigger_type": row["trigger_type"],
        "notify_status": row["notify_status"],
        "requested_at": ts(row["requested_at"]),
        "expires_at": ts(row["expires_at"]),
    }
    for key in _TRIGGER_OPTIONAL:
        _put(out, key, row.get(key))
    for key in ("request_payload", "response_payload"):
        if row.get(key) is not None:
            out[key] = row[key]
    if row.get("received_at") is not None:
        out["received_at"] = ts(row["received_at"])
    return out
