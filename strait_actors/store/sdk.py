"""The SDK plane's writes and reads (api.md §4.9): what a run's own code sends while it executes.

The frequent calls (heartbeat, log, progress, complete, fail) go through `Batcher`s: calls that
arrive together share one statement and one commit, and each caller is answered after that commit
with the row for its own call. Every write is fenced on the run token's (run, attempt, lease); the
statements in `queries.sql` return what the token is checked against, so a refused call costs no
second round trip to learn why. Driver errors come out as `store.errors` types.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from strait_actors import ids
from strait_actors.aio import Pending, answer, kept
from strait_actors.store.errors import Rejected, translated
from strait_actors.store.sql import Row, execute, fetch_all, fetch_one, kept_cursor, q

log = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_FLUSHES = 4  # statements of one kind in flight at once


@dataclass(frozen=True, slots=True)
class Token:
    """What a verified run token names: the run, its attempt, and the lease of its dispatch."""

    run_id: uuid.UUID
    attempt: int
    lease_id: uuid.UUID | None


class _Call(Pending[Row]):
    """One call's values, and its answer once the batch that carries it commits."""

    late = "SDK call outlived its deadline with its write in flight: answering the commit's decision"

    values: tuple[Any, ...]  # set by `Batcher.submit` (no __init__ of its own: one call frame less per call)


class Batcher:
    """Concurrent calls of one statement share a round trip.

    `columns` name the statement's array parameters, in the order of each call's values; the
    statement returns one row per call with its 1-based ordinal `n`. A batch PostgreSQL refuses
    (one call's value it cannot hold) is split until the refused call is alone, so one bad call
    fails only itself. A caller that gives up before its call is sent withdraws it; one that gives
    up after waits for the commit, so it never answers "not done" about a write that was made.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        statement: str,
        columns: Sequence[str],
        extra: Callable[[], dict[str, Any]] | None = None,
        split_on: tuple[type[Exception], ...] = (Rejected,),
        max_flushes: int = MAX_FLUSHES,
    ) -> None:
        self.pool = pool
        self.split_on = split_on
        self.max_flushes = max_flushes
        self.statement = statement
        self.columns = tuple(columns)
        self.extra = extra or dict
        self.waiting: list[_Call] = []
        self.flushes = 0
        self.flushing: set[asyncio.Task[None]] = set()

    async def submit(self, *values: Any) -> Row:
        call = _Call()
        call.values = values
        self.waiting.append(call)
        if self.flushes < self.max_flushes:
            self.flushes += 1
            kept(self.flushing, self._flush())
        return await answer(call)

    async def _flush(self) -> None:
        try:
            while self.waiting:
                calls = [c for c in self.waiting[:MAX_BATCH] if not c.done()]
                del self.waiting[:MAX_BATCH]
                if calls:
                    await self._run(calls)
        finally:
            self.flushes -= 1

    async def _run(self, calls: list[_Call]) -> None:
        try:
            async with self.pool.connection() as conn:
                calls = [c for c in calls if not c.done()]  # gave up while we waited for a connection
                if calls:
                    await self._execute(conn, calls)
        except Exception as exc:
            for call in calls:
                if not call.done():
                    call.set_exception(exc)

    async def _execute(self, conn: Any, calls: list[_Call]) -> None:
        for call in calls:
            call.sent = True
        params = {name: [c.values[i] for c in calls] for i, name in enumerate(self.columns)}
        try:
            with translated():
                cur = kept_cursor(conn, self.statement)
                await cur.execute(self.statement, {**params, **self.extra()})
                rows = await cur.fetchall()
        except self.split_on:  # one call's fault: find it by halves, the others go through
            if len(calls) == 1:
                raise
            mid = len(calls) // 2
            await self._execute(conn, calls[:mid])
            await self._execute(conn, calls[mid:])
            return
        for row in rows:
            call = calls[row["n"] - 1]
            if not call.done():
                call.set_result(row)


class SdkStore:
    """The SDK plane's statements over the API's pool, with the batchers of the frequent ones."""

    def __init__(self, pool: AsyncConnectionPool, lease_secs: float) -> None:
        self.pool = pool
        self.heartbeats = Batcher(
            pool, q("sdk_heartbeat"), ("ids", "attempts", "leases"), lambda: {"lease_secs": lease_secs}
        )
        self.events = Batcher(
            pool, q("sdk_events"), ("ids", "attempts", "leases", "types", "levels", "messages", "datas")
        )
        self.finishes = Batcher(
            pool,
            q("sdk_finish"),
            ("ids", "attempts", "leases", "statuses", "results", "errors", "error_classes", "checked"),
        )

    async def run(self, run_id: uuid.UUID) -> Row | None:
        return await fetch_one(self.pool, "sdk_run", {"id": run_id})

    async def heartbeat(self, t: Token) -> Row:
        return await self.heartbeats.submit(t.run_id, t.attempt, t.lease_id)

    async def event(self, t: Token, type_: str, level: str, message: str, data: Any) -> Row:
        return await self.events.submit(t.run_id, t.attempt, t.lease_id, type_, level, message, Jsonb(data))

    async def finish(
        self,
        t: Token,
        status: str,
        *,
        result: str | None = None,
        error: str | None = None,
        error_class: str | None = None,
        checked: bool = False,
    ) -> Row:
        """`result` is JSON text (or None): it reaches PostgreSQL as the caller sent it."""
        return await self.finishes.submit(t.run_id, t.attempt, t.lease_id, status, result, error, error_class, checked)

    async def checkpoint(self, run_id: uuid.UUID, state: Any, source: str) -> Row:
        for _ in range(20):  # a concurrent checkpoint of the same run took the sequence: next one
            row = await fetch_one(
                self.pool, "sdk_checkpoint", {"run_id": run_id, "state": Jsonb(state), "source": source}
            )
            if row is not None:
                return row
        raise Rejected("checkpoint sequence kept being taken")

    async def output(self, run_id: uuid.UUID, key: str, value: Any, schema: Any) -> Row:
        params = {
            "id": ids.uuid7(),
            "run_id": run_id,
            "key": key,
            "value": Jsonb(value),
            "schema": None if schema is None else Jsonb(schema),
        }
        row = await fetch_one(self.pool, "sdk_output", params)
        assert row is not None
        return row

    async def set_state(self, run_id: uuid.UUID, key: str, value: Any) -> Row:
        row = await fetch_one(self.pool, "sdk_set_state", {"run_id": run_id, "key": key, "value": Jsonb(value)})
        assert row is not None
        return row

    async def list_state(self, run_id: uuid.UUID) -> list[Row]:
        return await fetch_all(self.pool, "sdk_list_state", {"run_id": run_id})

    async def get_state(self, run_id: uuid.UUID, key: str) -> Row | None:
        return await fetch_one(self.pool, "sdk_get_state", {"run_id": run_id, "key": key})

    async def delete_state(self, run_id: uuid.UUID, key: str) -> None:
        await execute(self.pool, "sdk_delete_state", {"run_id": run_id, "key": key})

    async def usage(self, run_id: uuid.UUID, project_id: str, body: dict[str, Any]) -> Row:
        row = await fetch_one(self.pool, "sdk_usage", {"run_id": run_id, "project_id": project_id, **body})
        assert row is not None
        return row

    async def tool_call(self, run_id: uuid.UUID, body: dict[str, Any]) -> Row:
        params = {
            "run_id": run_id,
            "tool_name": body["tool_name"],
            "input": _json_or_none(body.get("input")),
            "output": _json_or_none(body.get("output")),
            "duration_ms": body.get("duration_ms"),
            "status": body.get("status") or "success",
        }
        row = await fetch_one(self.pool, "sdk_tool_call", params)
        assert row is not None
        return row

    async def spawn(
        self,
        t: Token,
        job_id: uuid.UUID,
        payload: str,
        payload_hash: str,
        *,
        priority: int,
        await_completion: bool,
        timeout_secs: int,
        actor: str | None,
    ) -> Row | None:
        """The child run (with `await_event_key`), or None when the token's run is not active."""
        params = {
            "parent_id": t.run_id,
            "attempt": t.attempt,
            "lease_id": t.lease_id,
            "child_id": ids.uuid7(),
            "job_id": job_id,
            "payload": payload,
            "payload_hash": payload_hash,
            "priority": priority,
            "await": await_completion,
            "trigger_id": ids.uuid7(),
            "timeout_secs": timeout_secs,
            "actor": actor,
        }
        return await fetch_one(self.pool, "sdk_spawn", params)

    async def continue_as_new(
        self, t: Token, payload: str | None, payload_hash: str | None, max_depth: int, actor: str | None
    ) -> Row | None:
        """The new run, or None (the token's run is not active, or its chain is at `max_depth`)."""
        params = {
            "parent_id": t.run_id,
            "attempt": t.attempt,
            "lease_id": t.lease_id,
            "new_id": ids.uuid7(),
            "payload": payload,
            "payload_hash": payload_hash,
            "max_depth": max_depth,
            "actor": actor,
        }
        return await fetch_one(self.pool, "sdk_continue", params)

    async def job_by_slug(self, project_id: str, slug: str) -> Row | None:
        return await fetch_one(self.pool, "job_by_slug", {"project_id": project_id, "slug": slug})

    async def annotate(self, t: Token, annotations: dict[str, str]) -> Row | None:
        params = {"id": t.run_id, "attempt": t.attempt, "lease_id": t.lease_id, "annotations": Jsonb(annotations)}
        return await fetch_one(self.pool, "sdk_annotate", params)


def _json_or_none(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


# ----------------------------------------------------------------- management-plane reads


async def list_checkpoints(
    pool: AsyncConnectionPool, run_id: uuid.UUID, limit: int, before_seq: int | None
) -> list[Row]:
    return await fetch_all(pool, "list_checkpoints", {"run_id": run_id, "limit": limit, "before_seq": before_seq})


async def list_outputs(pool: AsyncConnectionPool, run_id: uuid.UUID, limit: int, after_key: str | None) -> list[Row]:
    return await fetch_all(pool, "list_outputs", {"run_id": run_id, "limit": limit, "after_key": after_key})


async def list_of_run(
    pool: AsyncConnectionPool,
    query: str,
    run_id: uuid.UUID,
    limit: int,
    after_ts: datetime | None,
    after_id: Any,
) -> list[Row]:
    """One page of a run's rows in (created_at, id) order: `list_usage`, `list_tool_calls`, `list_children`."""
    params = {"run_id": run_id, "limit": limit, "after_ts": after_ts, "after_id": after_id}
    return await fetch_all(pool, query, params)


async def lineage(pool: AsyncConnectionPool, run_id: uuid.UUID) -> list[Row]:
    return await fetch_all(pool, "run_lineage", {"id": run_id})
