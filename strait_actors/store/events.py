"""Durable waits (engine.md §6): event triggers are rows, never timers in memory.

A run parks on an event in one statement (its transition and the trigger row); an event's arrival
resumes it in one statement (the trigger received, the run back to the queue with the payload as
its newest checkpoint, the pollers woken). Timeouts are the reaper's, in bounded passes.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from strait_actors import ids
from strait_actors.store.errors import Duplicate, Rejected, translated
from strait_actors.store.sdk import Batcher, Token
from strait_actors.store.sql import Row, count, fetch_all, fetch_one, q


class KeyInUse(Exception):
    """The event key already names a trigger of the project (for the row's whole life)."""


async def wait_for_event(
    pool: AsyncConnectionPool, t: Token, event_key: str, timeout_secs: int, notify_url: str | None
) -> Row:
    """The new trigger (with `over_quota`), or a row of NULLs but `over_quota` when the run was not
    parked (not executing under this token, or the project's cap). Raises KeyInUse."""
    params = {
        "id": t.run_id,
        "attempt": t.attempt,
        "lease_id": t.lease_id,
        "trigger_id": ids.uuid7(),
        "event_key": event_key,
        "timeout_secs": timeout_secs,
        "notify_url": notify_url,
    }
    try:
        row = await fetch_one(pool, "sdk_wait_for_event", params)
    except Duplicate as exc:
        if "event_triggers" in str(exc):
            raise KeyInUse(event_key) from None
        raise
    assert row is not None
    return row


async def by_key(pool: AsyncConnectionPool, project_id: str | None, event_key: str) -> list[Row]:
    """The trigger of a project with this key; with no project, every project's (at most two)."""
    if project_id is None:
        return await fetch_all(pool, "event_triggers_by_key", {"event_key": event_key})
    row = await fetch_one(pool, "event_trigger_by_key", {"project_id": project_id, "event_key": event_key})
    return [] if row is None else [row]


async def get(pool: AsyncConnectionPool, trigger_id: uuid.UUID) -> Row | None:
    return await fetch_one(pool, "get_event_trigger", {"id": trigger_id})


class Sender:
    """Event sends of this API process, batched: concurrent sends share one statement and one
    commit, each answered after it with the trigger as it is then."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.batcher = Batcher(
            pool,
            q("send_events"),
            ("projects", "keys", "sources", "payloads", "sent_bys", "checkpoints"),
            split_on=(Rejected, Duplicate),
            max_flushes=1,
        )

    async def send(self, project_id: str, event_key: str, source: str | None, payload: Any, sent_by: str) -> Row:
        """The trigger after the send (its columns NULL when there is none) and `received`, true
        when this send delivered it; `source` is the waiter kind the caller may send to (None:
        any), a trigger of another kind is left as it is (the caller answers 403)."""
        empty = payload is None or payload == {} or payload == []
        jsonb = None if payload is None else Jsonb(payload)
        for _ in range(20):  # an SDK checkpoint of the run took the sequence meanwhile: again
            try:
                return await self.batcher.submit(project_id, event_key, source, jsonb, sent_by or None, not empty)
            except Duplicate as exc:
                if "run_checkpoints" in str(exc):
                    continue
                raise
        raise RuntimeError("checkpoint sequence kept being taken")


async def cancel(pool: AsyncConnectionPool, trigger_id: uuid.UUID, actor: str) -> str | None:
    """What the trigger was before (None: it vanished)."""
    row = await fetch_one(pool, "cancel_event", {"id": trigger_id, "actor": actor or None})
    return None if row is None else str(row["was"])


async def list_triggers(pool: AsyncConnectionPool, params: dict[str, Any]) -> list[Row]:
    return await fetch_all(pool, "list_event_triggers", params)


async def of_run(pool: AsyncConnectionPool, run_id: uuid.UUID, limit: int) -> list[Row]:
    """The event triggers a run waited on, oldest first (the debug bundle)."""
    return await fetch_all(pool, "run_event_triggers", {"run_id": run_id, "limit": limit})


# ----------------------------------------------------------------- the reaper's passes (sync)


def expire_waits(conn: psycopg.Connection) -> tuple[int, int]:
    """(waits timed out, runs timed out with them)."""
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("expire_waits")).fetchone()
    return (int(row["waits"]), int(row["runs"])) if row else (0, 0)


def requeue_stale_dequeued(conn: psycopg.Connection, stale_secs: float) -> int:
    return count(conn, "requeue_stale_dequeued", {"stale_secs": stale_secs})


def resume_lost_waits(conn: psycopg.Connection) -> int:
    return count(conn, "resume_lost_waits")
