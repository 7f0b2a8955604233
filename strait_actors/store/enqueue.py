"""Enqueueing runs, for the API and for actors alike: shared INSERTs, admission, idempotency keys.

Concurrent callers' runs share one INSERT (and one commit); each caller is answered only after
the statement holding its run has committed. A statement that fails is retried group by group,
so one bad trigger cannot fail the others.

A caller that gives up (its request timed out) is answered "not created" only while that is
true: before its runs are sent, they are withdrawn and never written; once sent, the caller
waits for the commit and answers what it decided, so a client never retries a run that exists.
When the connection dies under a sent statement, the runs are looked up before anyone is told
they do not exist. An idempotency key already taken answers with the run
that holds it. Only a trigger with an admission limit to check (dedup window, a rate limit counted
in PostgreSQL, its project's queued/executing quota) takes the locks, in a transaction of its own
(engine.md §2.5); rate limits counted in Redis (`ratelimits`) leave it on the shared INSERT.
Runs of a debounce or batch window go their own way (`store.windows`), judged on the runs their
triggers made. Driver errors come out as `store.errors`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from strait_actors import fsm
from strait_actors.aio import Pending, answer, kept
from strait_actors.model import NewRun, Receipt
from strait_actors.ratelimits import Limit, RedisRateLimits, limits_of
from strait_actors.store import runs as store
from strait_actors.store import windows
from strait_actors.store.errors import RateLimited, translated
from strait_actors.store.sql import q

log = logging.getLogger(__name__)

MAX_ROWS = 2000
MAX_FLUSHES = 4
SETTLE_SECS = 10.0  # how long a sent statement whose connection died is looked for
QUOTA_RETRY_SECS = 5  # Retry-After of a quota refusal (engine.md §2.5)


async def _answer(fut: asyncio.Future[list[Receipt]], sent: Callable[[], bool]) -> list[Receipt]:
    """The receipts of a task of their own; a caller cancelled before its runs were sent withdraws
    them (nothing is written), one cancelled after waits for the commit instead of guessing."""
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if not sent():
            fut.cancel()
            raise
        log.warning("trigger outlived its deadline with its INSERT in flight: answering the commit's decision")
        return await asyncio.shield(fut)


class _Group(Pending[list[Receipt]]):
    """One caller's runs on their way into a shared INSERT, and their receipts once it commits."""

    late = "trigger outlived its deadline with its INSERT in flight: answering the commit's decision"

    runs: list[NewRun]  # set by `TriggerBatcher.submit` (no __init__ of its own: one call frame less per trigger)


class Enqueuer:
    """Enqueues runs of one job: the shared-INSERT batcher, or the locked admission path when the
    job or its project has a limit to check (engine.md §2.5)."""

    def __init__(self, pool: AsyncConnectionPool, redis_limits: RedisRateLimits | None = None) -> None:
        self.pool = pool
        self.batcher = TriggerBatcher(pool)
        self.redis_limits = redis_limits

    async def enqueue(
        self, job: Mapping[str, Any], runs: list[NewRun], quota: Mapping[str, Any] | None = None
    ) -> list[Receipt]:
        """Receipts in input order. `quota` is the project's quota row as the caller last read it
        (it only decides whether the project's quotas are checked; they are read again under lock).
        Raises `RateLimited` (a rate limit or quota), `MissingReference` (the job is gone)."""
        quotas = quota is not None and (
            quota.get("max_queued_runs") is not None or quota.get("max_executing_runs") is not None
        )
        deps = bool(job.get("has_dependencies"))
        if runs and runs[0].window_key is not None:  # a debounce or batch window: its own path
            with translated():
                task = asyncio.ensure_future(self._windowed(job, runs, quotas))
                receipts = await _answer(task, lambda: True)  # a trigger once begun is answered by its commit
            if deps:
                await self._look_again(runs, receipts)
            return receipts
        limits = limits_of(job)
        counted = False  # the rate limits were counted in Redis
        if limits and self.redis_limits is not None:
            counted = await self.redis_limits.take(limits, [r.id for r in runs])
        try:
            with translated():
                if job["dedup_window_secs"] or quotas or deps or (limits and not counted):
                    sent: list[bool] = []  # non-empty once the INSERT is on its way
                    check = _Checks(quotas=quotas, rate=bool(limits) and not counted, deps=deps)
                    task = asyncio.ensure_future(self._admitted(job, runs, sent, check))
                    receipts = await _answer(task, lambda: bool(sent))
                else:
                    receipts = await self.batcher.submit(runs)
        except BaseException:
            if counted:
                self._give_back(limits, [r.id for r in runs])
            raise
        if deps:
            await self._look_again(runs, receipts)
        unused = [run.id for run, got in zip(runs, receipts, strict=True) if got.id != run.id]
        if counted and unused:  # before answering: the caller's next trigger must find the room
            assert self.redis_limits is not None
            await self.redis_limits.give_back(limits, unused)
        return receipts

    async def _windowed(self, job: Mapping[str, Any], runs: list[NewRun], quotas: bool) -> list[Receipt]:
        """Triggers of a debounce or batch window (`store.windows`): each joins its window's run or
        makes one, so what a trigger costs against a quota or rate limit is known only once it is
        applied. With any to check, the items are applied in one transaction under the admission
        locks and judged on the runs they made before it commits (a refusal rolls every item back);
        limits counted in Redis take the runs made inside it (given back if it does not commit; Redis
        away, PostgreSQL counts them). Without, each item commits as it is applied."""
        limits = limits_of(job)
        redis = self.redis_limits if limits else None
        if not quotas and not limits:
            async with self.pool.connection() as conn:
                return [await windows.apply(conn, job, run) for run in runs]
        while True:
            taken: list[uuid.UUID] = []
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    admission = _Admission(job, _Checks(quotas=quotas, rate=bool(limits) and redis is None))
                    await admission.lock(conn)
                    receipts = [await windows.apply(conn, job, run) for run in runs]
                    made = [run.id for run, got in zip(runs, receipts, strict=True) if got.id == run.id]
                    if made:
                        admission.judge(len(made))
                        if redis is not None:
                            if not await redis.take(limits, made):
                                raise _RedisAway
                            taken = made
                        await admission.record(conn, len(made))
                return receipts
            except _RedisAway:
                redis = None  # again, counted in PostgreSQL
            except BaseException:
                if taken:
                    self._give_back(limits, taken)
                raise

    async def _look_again(self, runs: list[NewRun], receipts: list[Receipt]) -> None:
        """Runs made waiting for their dependencies are looked at again once committed: an upstream
        run that ended while they were being written released nothing of theirs (it could not see
        them). Best effort: the Reaper's backstop looks at waits too."""
        waiting = [
            run.id for run, got in zip(runs, receipts, strict=True) if got.id == run.id and got.status == fsm.S.WAITING
        ]
        if not waiting:
            return
        try:
            async with self.pool.connection() as conn:
                await conn.execute(q("release_dependency_waits_of"), {"ids": waiting})
        except Exception as exc:  # the runs exist and wait; the backstop will see them
            log.warning("second look at %d dependency wait(s) failed: %s", len(waiting), exc)

    def _give_back(self, limits: list[Limit], run_ids: list[uuid.UUID]) -> None:
        """On the way out of a failed or cancelled enqueue: in the background."""
        assert self.redis_limits is not None
        task = asyncio.ensure_future(self.redis_limits.give_back(limits, run_ids))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _admitted(
        self, job: Mapping[str, Any], runs: list[NewRun], sent: list[bool], check: _Checks
    ) -> list[Receipt]:
        """Quotas, dedup window and rate limits under their locks (`_Admission`), then the INSERT:
        one transaction."""
        async with self.pool.connection() as conn, conn.transaction():
            admission = _Admission(job, check)
            await admission.lock(conn)
            admission.judge(len(runs))
            if check.deps:
                runs = await _gate_on_dependencies(conn, job["id"], runs)
            out: list[Receipt | None] = [None] * len(runs)
            fresh: list[tuple[int, NewRun]] = []
            same_as: dict[int, int] = {}  # a duplicate payload inside this request -> its first item
            first: dict[str, int] = {}
            for i, run in enumerate(runs):
                if job["dedup_window_secs"]:
                    if run.payload_hash in first:  # as a second request would: the first run answers
                        same_as[i] = first[run.payload_hash]
                        continue
                    params = {"job_id": job["id"], "payload_hash": run.payload_hash, "window": job["dedup_window_secs"]}
                    cur = await conn.execute(q("recent_run_with_payload"), params)
                    hit: Any = await cur.fetchone()
                    if hit is not None:
                        out[i] = Receipt(hit["id"], hit["status"], False)
                        continue
                    first[run.payload_hash] = i
                fresh.append((i, run))
            new = [r for _, r in fresh]
            sent.append(True)  # from here, the transaction's commit decides the answer
            inserted = await store.insert_runs(conn, new) if new else {}
            for (i, _), receipt in zip(fresh, await resolve_conflicts(conn, new, inserted), strict=True):
                out[i] = receipt
            for i, j in same_as.items():
                out[i] = out[j]
            created = sum(1 for i, run in enumerate(runs) if (got := out[i]) is not None and got.id == run.id)
            waits = [run_id for run_id, status in inserted.items() if status == fsm.S.WAITING]
            if waits:
                await conn.execute(q("mark_dependency_waits"), {"ids": waits})
            if created:
                await admission.record(conn, created)
        return [r for r in out if r is not None]


class _RedisAway(Exception):
    """Redis could not count a windowed trigger's runs: count them in PostgreSQL instead."""


class _Admission:
    """A trigger's admission checks in its transaction (engine.md §2.5): `lock` takes each lock and
    reads the counts it guards (the project's quota row, the job row, the named keys in name order:
    always that order, so triggers never wait on each other in a cycle), `judge` refuses `n` new
    runs over a quota or limit (`RateLimited`), `record` counts the runs made against the named keys."""

    def __init__(self, job: Mapping[str, Any], check: _Checks) -> None:
        self.job = job
        self.check = check
        self.quota: Any = None  # the quota row and the project's counts
        self.active: Any = None
        self.recent: Any = None  # the job's runs inside its rate window
        self.keys = sorted(e["key"] for e in job.get("rate_limit_keys") or ()) if check.rate else []
        self.hits: dict[str, Any] = {}

    async def lock(self, conn: Any) -> None:
        job, check = self.job, self.check
        if check.quotas:
            cur = await conn.execute(q("lock_project_quota"), {"project_id": job["project_id"]})
            self.quota = await cur.fetchone()
            if self.quota is not None:
                queued_cap, executing_cap = self.quota["max_queued_runs"], self.quota["max_executing_runs"]
                params = {
                    "project_id": job["project_id"],
                    "queued_cap": queued_cap if queued_cap is not None else 0,
                    "executing_cap": executing_cap if executing_cap is not None else 0,
                }
                self.active = await _one(conn, "count_active_runs", params)
        if job["dedup_window_secs"] or (check.rate and job["rate_limit_max"]):
            await conn.execute(q("lock_job"), {"id": job["id"]})
        if check.rate and job["rate_limit_max"]:
            window = job["rate_limit_window_secs"] or 60
            self.recent = await _one(conn, "count_recent_runs", {"job_id": job["id"], "window": window})
        windows_of = {e["key"]: e for e in job.get("rate_limit_keys") or ()}
        for key in self.keys:
            params = {"project_id": job["project_id"], "key": key, "window": windows_of[key]["window_secs"]}
            await conn.execute(q("lock_rate_key"), params)
            self.hits[key] = await _one(conn, "count_rate_hits", params)

    def judge(self, n: int) -> None:
        """Engine.md §2.5: at most `max_queued_runs` queued or delayed (these runs included); no new
        run while `max_executing_runs` run; the job's rate limit, then each named key's."""
        job = self.job
        if self.quota is not None:
            queued_cap, executing_cap = self.quota["max_queued_runs"], self.quota["max_executing_runs"]
            if queued_cap is not None and self.active["queued"] + n > queued_cap:
                raise RateLimited(QUOTA_RETRY_SECS, "project queued quota exceeded")
            if executing_cap is not None and self.active["executing"] >= executing_cap:
                raise RateLimited(QUOTA_RETRY_SECS, "project executing quota exceeded")
        if self.recent is not None:
            window = job["rate_limit_window_secs"] or 60
            if self.recent["n"] + n > job["rate_limit_max"]:
                raise RateLimited(_wait(self.recent["wait"], window))
        windows_of = {e["key"]: e for e in job.get("rate_limit_keys") or ()}
        for key in self.keys:
            entry, row = windows_of[key], self.hits[key]
            if row["n"] + n > entry["max"]:
                name = json.dumps(key, ensure_ascii=False)
                raise RateLimited(_wait(row["wait"], entry["window_secs"]), f"rate limit key {name} exceeded")

    async def record(self, conn: Any, n: int) -> None:
        if self.keys:
            hits = {"project_id": self.job["project_id"], "keys": self.keys, "n": n}
            await conn.execute(q("insert_rate_hits"), hits)


_BACKGROUND: set[asyncio.Task[None]] = set()  # give-backs in flight (a task needs a reference)


@dataclass(frozen=True, slots=True)
class _Checks:
    quotas: bool  # the project's queued/executing quotas
    rate: bool  # the job's rate limits, counted in PostgreSQL
    deps: bool = False  # the job's dependencies on other jobs


def dependency_key(run: NewRun) -> str | None:
    """What matches a run to its upstream runs (engine.md §2.8): its idempotency key, else its
    payload's `dependency_key` (in its metadata); as `strait_run_dependency_key` (migration 0012)."""
    if run.triggered_by == "cron":  # a cron run's idempotency key is its tick's fire key
        return run.metadata.get("dependency_key")
    return run.idempotency_key or run.metadata.get("dependency_key")


async def _gate_on_dependencies(conn: Any, job_id: uuid.UUID, runs: list[NewRun]) -> list[NewRun]:
    """Runs that would be queued now wait (`waiting`) while a dependency of their job is unmet.
    Delayed runs are gated when they come due (the claim's promotion, migration 0012)."""
    gated = [i for i, run in enumerate(runs) if run.status == fsm.S.QUEUED]
    if not gated:
        return runs
    cur = await conn.execute(
        q("dependencies_met"), {"job_id": job_id, "keys": [dependency_key(runs[i]) for i in gated]}
    )
    met = {int(row["n"]): bool(row["met"]) for row in await cur.fetchall()}
    out = list(runs)
    for n, i in enumerate(gated, start=1):
        if not met[n]:
            out[i] = dataclasses.replace(runs[i], status=fsm.S.WAITING)
    return out


async def _one(conn: Any, name: str, params: Mapping[str, Any]) -> Any:
    cur = await conn.execute(q(name), params)
    row = await cur.fetchone()
    assert row is not None  # aggregates always answer one row
    return row


def _wait(seconds: Any, window: int) -> int:
    """Retry-After: until the oldest counted run leaves the window (the whole window if none)."""
    return max(1, math.ceil(float(seconds))) if seconds is not None else window


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
        if holder is not None and not holder["stale"] and holder["status"] != fsm.S.EXPIRED:
            return Receipt(holder["id"], holder["status"], True)
        if holder is not None:
            await store.release_idempotency_key(conn, holder["id"])
        inserted = await store.insert_runs(conn, [run])
        if run.id in inserted:
            return Receipt(run.id, inserted[run.id], False)
    raise RuntimeError(f"idempotency key {run.idempotency_key!r} kept changing hands")


class TriggerBatcher:
    """Groups the runs of concurrent callers into shared INSERT statements."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.waiting: list[_Group] = []
        self.flushes = 0
        self.flushing: set[asyncio.Task[None]] = set()

    async def submit(self, runs: list[NewRun]) -> list[Receipt]:
        group = _Group()
        group.runs = runs
        self.waiting.append(group)
        if self.flushes < MAX_FLUSHES:
            self.flushes += 1
            kept(self.flushing, self._flush())
        return await answer(group)

    def _take(self) -> list[_Group]:
        taken, rows = 0, 0
        for group in self.waiting:
            if taken and rows + len(group.runs) > MAX_ROWS:
                break
            taken += 1
            rows += len(group.runs)
        groups, self.waiting = self.waiting[:taken], self.waiting[taken:]
        return groups

    async def _flush(self) -> None:
        try:
            while self.waiting:
                groups = self._take()
                try:
                    await self._write(groups)
                except Exception as exc:
                    sent = [g for g in groups if g.sent and not g.done()]
                    if sent and isinstance(exc, psycopg.OperationalError):
                        await self._settle(sent, exc)
                    for group in groups:
                        if not group.done():
                            group.set_exception(exc)
        finally:
            self.flushes -= 1

    async def _write(self, groups: list[_Group]) -> None:
        async with self.pool.connection() as conn:
            groups = [g for g in groups if not g.done()]  # callers that gave up while we waited
            if not groups:
                return
            for group in groups:
                group.sent = True
            everything = [r for group in groups for r in group.runs]
            try:
                inserted = await store.insert_runs(conn, everything)
            except psycopg.errors.Error as exc:
                if len(groups) == 1 or isinstance(exc, psycopg.OperationalError):
                    raise
                log.info("shared trigger insert failed (%s); retrying group by group", exc)
                await self._write_each(conn, groups)
                return
            for group in groups:
                if all(r.id in inserted for r in group.runs):
                    receipts = [Receipt(r.id, inserted[r.id], False) for r in group.runs]
                else:
                    receipts = await resolve_conflicts(conn, group.runs, inserted)
                if not group.done():
                    group.set_result(receipts)

    async def _write_each(self, conn: Any, groups: list[_Group]) -> None:
        for group in groups:
            try:
                inserted = await store.insert_runs(conn, group.runs)
                group.set_result(await resolve_conflicts(conn, group.runs, inserted))
            except psycopg.errors.Error as exc:
                group.set_exception(exc)

    async def _settle(self, groups: list[_Group], exc: Exception) -> None:
        """The connection died under a sent INSERT: it may have committed. Look the runs up (for
        up to SETTLE_SECS) so that no caller hears "not created" about a run that exists."""
        ids = [r.id for g in groups for r in g.runs]
        deadline = asyncio.get_running_loop().time() + SETTLE_SECS
        while True:
            try:
                async with self.pool.connection(timeout=2) as conn:
                    found = await store.statuses_of(conn, ids)
                break
            except Exception as again:
                if asyncio.get_running_loop().time() > deadline:
                    log.warning("trigger insert lost its connection (%s); outcome unknown: %s", exc, again)
                    return
                await asyncio.sleep(0.5)
        for group in groups:
            if all(r.id in found for r in group.runs):
                group.set_result([Receipt(r.id, found[r.id], False) for r in group.runs])
