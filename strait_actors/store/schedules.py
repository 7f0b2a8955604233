"""The cron Scheduler's statements (engine.md §7.1): arm jobs with their next tick, fire due ticks.

A tick is fired once however many schedulers run: taking it moves the job's `next_fire_at` on,
compared and set, in the statement that inserts its run under the tick's fire key (a unique
idempotency key of the job). No lock is held between statements; a scheduler that loses the
compare-and-set for a job simply has nothing to do for it.

After downtime a job's latest missed tick fires once (`latest_fire`), and the ones before it are
skipped; the tick after `now` is armed next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import psycopg
from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError
from psycopg.rows import dict_row

from strait_actors import cron, ids
from strait_actors.payloads import canonical_payload
from strait_actors.ratelimits import Limit, SyncRedisRateLimits, limits_of
from strait_actors.store.errors import translated
from strait_actors.store.sql import q

log = logging.getLogger(__name__)

BATCH = 1000
# a schedule that never matches (February 30th) or cannot be read is parked here, never due
NEVER = datetime(9999, 12, 31, tzinfo=UTC)
_EMPTY_HASH = canonical_payload({})[1]
_CRON_ERRORS = (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, KeyError, ValueError)


@dataclass(frozen=True, slots=True)
class Fired:
    """One due tick a scheduler took: the run it made, or why it was skipped."""

    job_id: str
    fire_at: datetime
    fire_key: str
    run_id: str | None  # None: skipped, or the fire key had a run already
    skipped: str | None  # job_off | project_paused | overlap | rate_limit | quota | budget


def _next(expr: str, tz: str | None, after: datetime) -> datetime:
    try:
        return cron.next_fire(expr, tz, after)
    except _CRON_ERRORS as exc:
        log.warning("cron %r (%s) has no next tick after %s: %s", expr, tz, after.isoformat(), exc)
        return NEVER


def arm(conn: psycopg.Connection) -> int:
    """Arm jobs without a next tick: the first tick after their last change (so a job created a
    moment before its tick still gets it)."""
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q("cron_unarmed"), {"limit": BATCH}).fetchall()
        if not rows:
            return 0
        params = {
            "ids": [r["id"] for r in rows],
            "next": [_next(r["cron"], r["timezone"], r["updated_at"]) for r in rows],
            "seen": [r["updated_at"] for r in rows],
        }
        return cur.execute(q("cron_arm"), params).rowcount


def next_due(conn: psycopg.Connection) -> datetime | None:
    """The earliest armed tick of any job, None when no job has one."""
    with translated():
        row = conn.execute(q("cron_next_due")).fetchone()
    return row[0] if row else None


def fire_due(conn: psycopg.Connection, now: datetime, redis: SyncRedisRateLimits | None = None) -> list[Fired]:
    """Fire the ticks due at `now` (one batch): each job's latest due tick once, its next armed.
    With `redis` (REDIS_URL set), a tick of a job with rate limits is counted in Redis, where the
    API counts its triggers: admitted there before the statement, given back if it made no run."""
    taken: list[tuple[list[Limit], str]] = []  # (limits, run id) admitted in Redis
    made: set[str] = set()
    try:
        with translated(), conn.cursor(row_factory=dict_row) as cur, conn.transaction():
            rows = cur.execute(q("cron_due"), {"now": now, "limit": BATCH}).fetchall()
            if not rows:
                return []
            ticks = list(_ticks(rows, now))
            run_ids = [ids.uuid7() for _ in ticks]
            judge = [0] * len(ticks)  # cron_fire's `judge`: 0 here, 1 admitted by Redis, 2 refused
            if redis is not None:
                for i, row in enumerate(rows):
                    limits = limits_of(row)
                    verdict = redis.take(limits, [run_ids[i]]) if limits else None
                    if verdict is not None:
                        judge[i] = 1 if verdict else 2
                        if verdict:
                            taken.append((limits, str(run_ids[i])))
            params: dict[str, Any] = {
                "ids": [t[0] for t in ticks],
                "due": [t[1] for t in ticks],
                "fire_at": [t[2] for t in ticks],
                "next": [t[3] for t in ticks],
                "keys": [cron.fire_key(t[0], t[2]) for t in ticks],
                "run_ids": run_ids,
                "judge": judge,
                "empty_hash": _EMPTY_HASH,
            }
            # one transaction: the rows read stay this scheduler's, and a cancel_running tick's cancels
            # commit with its new run
            out = cur.execute(q("cron_fire"), params).fetchall()
            cancel = [r for r in out if r["run_id"] and r["cron_overlap_policy"] == "cancel_running"]
            if cancel:
                cur.execute(
                    q("cron_cancel_overlapped"),
                    {"job_ids": [r["job_id"] for r in cancel], "run_ids": [r["run_id"] for r in cancel]},
                )
        made = {r["run_id"] for r in out if r["run_id"]}
        return [Fired(r["job_id"], r["fire_at"], r["fire_key"], r["run_id"], r["skipped"]) for r in out]
    finally:  # committed or not: what Redis admitted for a run that does not exist leaves its windows
        if redis is not None:
            for limits, run_id in taken:
                if run_id not in made:
                    redis.give_back(limits, [run_id])


def _ticks(rows: list[dict[str, Any]], now: datetime) -> Iterable[tuple[str, datetime, datetime, datetime]]:
    """(job, due tick as stored, tick to fire, next tick) for each due job. On time (the tick after
    the due one is still ahead) that is one computation; after downtime, the latest missed tick."""
    for r in rows:
        due, expr, tz = r["next_fire_at"], r["cron"], r["timezone"]
        after_due = _next_cached(expr, tz, due)
        if after_due > now:
            yield r["id"], due, due, after_due
            continue
        try:
            fire_at = cron.latest_fire(expr, tz, now, due)
        except _CRON_ERRORS:
            fire_at = due
        yield r["id"], due, fire_at, _next(expr, tz, max(now, fire_at))


@lru_cache(maxsize=1024)
def _next_cached(expr: str, tz: str | None, after: datetime) -> datetime:
    """Jobs that share a schedule share their ticks: one computation for all of them per tick."""
    return _next(expr, tz, after)
