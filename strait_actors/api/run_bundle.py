"""`GET /v1/runs/{id}/debug-bundle` (EXTRA in api.md §4.4): one run's whole story in one JSON, for
a bug report or a support ticket, with the same auth and project scoping as `GET /v1/runs/{id}`.

The run; its job now and the job version it was enqueued with; its attempts (the state changes
grouped by the attempt they recorded); its events, checkpoints, outputs, usage, tool calls and the
waits it made. Each list holds at most `PER_LIST` rows (events and the rest oldest first,
checkpoints newest first); `truncated` names the lists that had more, which the per-list routes
page through. No signing secret is in it: jobs and snapshots are rendered as `GET /v1/jobs` does.
There is no webhook delivery table yet, so there are no deliveries to show.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from strait_actors.api import render
from strait_actors.api.auth import require
from strait_actors.api.http import json_response
from strait_actors.api.runs import load_run
from strait_actors.api.state import POOL
from strait_actors.store import events as events_store
from strait_actors.store import jobs as jobs_store
from strait_actors.store import runs as runs_store
from strait_actors.store import sdk as sdk_store
from strait_actors.store.sql import Row

routes = web.RouteTableDef()

PER_LIST = 500
_SECRET_KEYS = ("signing_secret", "webhook_secret", "endpoint_signing_secret")


@routes.get("/v1/runs/{run_id}/debug-bundle")
async def debug_bundle(request: web.Request) -> web.Response:
    require(request, "runs:read")
    run = await load_run(request)
    pool, run_id, more = request.app[POOL], run["id"], PER_LIST + 1

    def events(type_: str | None) -> Any:
        return runs_store.list_events(pool, run_id, level=None, type_=type_, limit=more, after_ts=None, after_id=None)

    job, lists = await asyncio.gather(
        jobs_store.get_job(pool, run["job_id"]),
        asyncio.gather(
            events(None),
            events("state_change"),
            sdk_store.list_checkpoints(pool, run_id, more, None),
            sdk_store.list_outputs(pool, run_id, more, None),
            sdk_store.list_of_run(pool, "list_usage", run_id, more, None, None),
            sdk_store.list_of_run(pool, "list_tool_calls", run_id, more, None, None),
            events_store.of_run(pool, run_id, more),
        ),
    )
    names = ("events", "state_changes", "checkpoints", "outputs", "usage", "tool_calls", "waits")
    rows = dict(zip(names, lists, strict=True))
    truncated = [n for n, r in rows.items() if len(r) > PER_LIST]
    rows = {n: r[:PER_LIST] for n, r in rows.items()}
    body = {
        "run": render.run(run),
        "job": render.job(job) if job is not None else None,
        "job_version": await _job_version(pool, run, job),
        "attempts": attempts(rows["state_changes"]),
        "events": [render.run_event(r) for r in rows["events"]],
        "checkpoints": [render.checkpoint(r) for r in rows["checkpoints"]],
        "outputs": [render.output(r) for r in rows["outputs"]],
        "usage": [render.usage(r) for r in rows["usage"]],
        "tool_calls": [render.tool_call(r) for r in rows["tool_calls"]],
        "waits": [render.event_trigger(r) for r in rows["waits"]],
        "limits": {"per_list": PER_LIST},
        "truncated": truncated,
        "generated_at": render.now_ts(),
    }
    return json_response(body)


async def _job_version(pool: Any, run: Row, job: Row | None) -> dict[str, Any] | None:
    """The job as the run was enqueued with it: the version's snapshot (taken when the job was next
    changed), or the job itself while it is still at that version."""
    version_id = run.get("job_version_id")
    if version_id and job is not None:
        row = await jobs_store.get_version(pool, job["id"], version_id)
        if row is not None:
            snapshot = {k: v for k, v in dict(row["snapshot"]).items() if k not in _SECRET_KEYS}
            return {
                "version": row["version"],
                "version_id": row["version_id"],
                "source": "snapshot",
                "job": snapshot,
            }
    if job is None:
        return None
    if (job["version_id"] == version_id) if version_id else (job["version"] == run["job_version"]):
        return {"version": job["version"], "version_id": job["version_id"], "source": "current", "job": render.job(job)}
    return None


def attempts(changes: list[Row]) -> list[dict[str, Any]]:
    """The state changes grouped by the attempt each recorded, in order: when the attempt started
    executing, where it ended up, its last error, and each transition."""
    out: dict[int, dict[str, Any]] = {}
    for row in changes:
        data = row["data"] if isinstance(row["data"], dict) else {}
        n = data.get("attempt")
        if not isinstance(n, int):
            continue
        entry = out.setdefault(n, {"attempt": n, "transitions": []})
        at = render.ts(row["created_at"])
        entry["transitions"].append({"from": data.get("from"), "to": data.get("to"), "at": at})
        if data.get("to") == "executing" and "started_at" not in entry:
            entry["started_at"] = at
        entry["status"], entry["last_change_at"] = data.get("to"), at
        if data.get("error"):
            entry["error"] = data["error"]
    return list(out.values())
