"""Triggers of jobs with a debounce or batch window (`strait_actors.windows`): each joins the delayed
run of its (job, window key) or makes it, in one statement on the partial unique index of migration
0008 (INSERT … ON CONFLICT … DO UPDATE). Admission (quotas, rate limits) is the caller's
(`store.enqueue`): it holds its locks around the triggers of a request and judges the runs made.

Items of one request (a bulk trigger) are triggers in their order. A batch that fills is queued by
the trigger that filled it (`flush_batch`, through the transition seam); a trigger that finds its
batch full flushes it and opens the next one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg.types.json import Jsonb

from strait_actors import fsm, windows
from strait_actors.model import NewRun, Receipt
from strait_actors.store import runs
from strait_actors.store.sql import q

ATTEMPTS = 20  # a batch that fills under this trigger again and again is a bug, not contention


async def apply(conn: Any, job: Mapping[str, Any], run: NewRun) -> Receipt:
    """One trigger: the receipt of the run it joined or made (made: its own id)."""
    if windows.kind(job) != windows.DEBOUNCE:
        return await _batch(conn, job, run)
    params = {**_params(run), "max_delay": windows.max_delay_secs(job)}
    for _ in range(ATTEMPTS):
        cur = await conn.execute(q("debounce_trigger"), params)
        row: Any = await cur.fetchone()
        if row is not None:  # none only if the run it met stopped being delayed under it: try again
            return Receipt(row["id"], row["status"], False)
    raise RuntimeError(f"debounce {run.window_key!r} of job {run.job_id} found no run to join or make")


async def _batch(conn: Any, job: Mapping[str, Any], run: NewRun) -> Receipt:
    limit = windows.batch_limit(job)
    text, digest = windows.first_batch(run.payload)
    room = {
        "job_id": run.job_id,
        "window_key": run.window_key,
        "max_items": limit,
        "item_bytes": len(run.payload.encode()),
        "max_bytes": windows.MAX_BATCH_BYTES,
    }
    params = {
        **_params(run),
        **room,
        "payload": text,
        "payload_hash": digest,
        "item": run.payload,
        "status": fsm.S.QUEUED if limit == 1 else fsm.S.DELAYED,
    }
    for _ in range(ATTEMPTS):
        cur = await conn.execute(q("batch_trigger"), params)
        row: Any = await cur.fetchone()
        if row is None:  # the waiting batch has no room for this item: it goes, the next one opens
            await conn.execute(q("flush_batch"), room)
            continue
        if row["status"] == fsm.S.DELAYED and row["window_items"] >= limit:  # this item filled it
            cur = await conn.execute(q("flush_batch"), {**room, "item_bytes": 0})
            flushed: Any = await cur.fetchone()
            if flushed is None:  # another trigger flushed it first (or it was canceled): as it is now
                return Receipt(row["id"], (await runs.statuses_of(conn, [row["id"]]))[row["id"]], False)
            return Receipt(row["id"], flushed["status"], False)
        return Receipt(row["id"], row["status"], False)
    raise RuntimeError(f"batch {run.window_key!r} of job {run.job_id} stayed full through {ATTEMPTS} flushes")


def _params(run: NewRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "job_id": run.job_id,
        "project_id": run.project_id,
        "priority": run.priority,
        "payload": run.payload,
        "payload_hash": run.payload_hash,
        "tags": Jsonb(run.tags),
        "metadata": Jsonb(run.metadata),
        "triggered_by": run.triggered_by,
        "scheduled_at": run.scheduled_at,
        "ttl": run.ttl_secs,
        "concurrency_key": run.concurrency_key,
        "batch_id": run.batch_id,
        "job_version": run.job_version,
        "job_version_id": run.job_version_id,
        "created_by": run.created_by,
        "window_key": run.window_key,
    }
