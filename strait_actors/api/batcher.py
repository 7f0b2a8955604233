"""Enqueueing runs: concurrent trigger calls share one INSERT (and one commit).

Each caller is answered only after the statement holding its run has committed. A
statement that fails is retried group by group, so one bad trigger cannot fail the
others; an idempotency key already taken answers with the run that holds it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from strait_actors.store import runs as store
from strait_actors.store.runs import NewRun

log = logging.getLogger(__name__)

MAX_ROWS = 2000
MAX_FLUSHES = 4


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the trigger API answers for one run."""

    id: uuid.UUID
    status: str
    idempotency_hit: bool


async def resolve_conflicts(conn: Any, runs: list[NewRun], inserted: dict[uuid.UUID, str]) -> list[Receipt]:
    """Receipts in input order; a run missing from `inserted` lost its idempotency key to another."""
    out: list[Receipt] = []
    for run in runs:
        status = inserted.get(run.id)
        if status is not None:
            out.append(Receipt(run.id, status, False))
        else:
            out.append(await _claim_key(conn, run))
    return out


async def _claim_key(conn: Any, run: NewRun) -> Receipt:
    """The key is taken: the holder answers, unless it ended over 24 h ago or expired (then retake)."""
    assert run.idempotency_key is not None
    for _ in range(5):
        holder = await store.run_by_idempotency_key(conn, run.job_id, run.idempotency_key)
        if holder is not None and not holder["stale"] and holder["status"] != "expired":
            return Receipt(holder["id"], holder["status"], True)
        if holder is not None:
            await store.release_idempotency_key(conn, holder["id"])
        inserted = await store.insert_runs(conn, [run])
        if run.id in inserted:
            return Receipt(run.id, inserted[run.id], False)
    raise RuntimeError(f"idempotency key {run.idempotency_key!r} kept changing hands")


class TriggerBatcher:
    """Groups the runs of concurrent trigger requests into shared INSERT statements."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.waiting: list[tuple[list[NewRun], asyncio.Future[list[Receipt]]]] = []
        self.flushes = 0

    async def submit(self, runs: list[NewRun]) -> list[Receipt]:
        fut: asyncio.Future[list[Receipt]] = asyncio.get_running_loop().create_future()
        self.waiting.append((runs, fut))
        if self.flushes < MAX_FLUSHES:
            self.flushes += 1
            asyncio.get_running_loop().create_task(self._flush())
        return await fut

    def _take(self) -> list[tuple[list[NewRun], asyncio.Future[list[Receipt]]]]:
        taken, rows = 0, 0
        for group, _fut in self.waiting:
            if taken and rows + len(group) > MAX_ROWS:
                break
            taken += 1
            rows += len(group)
        groups, self.waiting = self.waiting[:taken], self.waiting[taken:]
        return groups

    async def _flush(self) -> None:
        try:
            while self.waiting:
                groups = self._take()
                try:
                    await self._write(groups)
                except Exception as exc:
                    for _runs, fut in groups:
                        if not fut.done():
                            fut.set_exception(exc)
        finally:
            self.flushes -= 1

    async def _write(self, groups: list[tuple[list[NewRun], asyncio.Future[list[Receipt]]]]) -> None:
        everything = [r for group, _ in groups for r in group]
        async with self.pool.connection() as conn:
            try:
                inserted = await store.insert_runs(conn, everything)
            except psycopg.errors.Error as exc:
                if len(groups) == 1:
                    raise
                log.info("shared trigger insert failed (%s); retrying group by group", exc)
                await self._write_each(conn, groups)
                return
            for group, fut in groups:
                if all(r.id in inserted for r in group):
                    receipts = [Receipt(r.id, inserted[r.id], False) for r in group]
                else:
                    receipts = await resolve_conflicts(conn, group, inserted)
                if not fut.done():
                    fut.set_result(receipts)

    async def _write_each(self, conn: Any, groups: list[tuple[list[NewRun], asyncio.Future[list[Receipt]]]]) -> None:
        for group, fut in groups:
            try:
                inserted = await store.insert_runs(conn, group)
                fut.set_result(await resolve_conflicts(conn, group, inserted))
            except psycopg.errors.Error as exc:
                fut.set_exception(exc)
