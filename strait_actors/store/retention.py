"""Retention (engine.md §7.3): terminal runs and answered event triggers are deleted once older than
their retention, one bounded batch per pass (`dead_letter` runs never; a waiting trigger never).

Rows are walked in primary-key order: ids are UUIDv7, so "created before the cutoff" is an id range
and the passes need no index of their own on the hot tables. A run's idempotency key lives on the
run, so it goes with it (there is no separate key table to expire).
"""

from __future__ import annotations

import time

import psycopg

from strait_actors import ids
from strait_actors.store.sql import count

MAX_WINDOW_SECS = 30 * 86_400  # the longest rate-limit window (api.validation.MAX_WINDOW_SECS)


def purge_runs(conn: psycopg.Connection, short_hours: float, long_hours: float, limit: int) -> int:
    """Delete one batch of runs past retention (a retention of 0 keeps that class); how many went."""
    short, long = (h * 3600 if h > 0 else None for h in (short_hours, long_hours))
    kept = [x for x in (short, long) if x is not None]
    if not kept:
        return 0
    params = {
        "created_before": ids.uuid7_floor(time.time() - min(kept)),
        "short_secs": short,
        "long_secs": long,
        "limit": limit,
    }
    return count(conn, "purge_runs", params)


def purge_event_triggers(conn: psycopg.Connection, hours: float, limit: int) -> int:
    """Delete one batch of answered/ended triggers older than `hours` (0: keep them)."""
    if hours <= 0:
        return 0
    params = {"created_before": ids.uuid7_floor(time.time() - hours * 3600), "secs": hours * 3600, "limit": limit}
    return count(conn, "purge_event_triggers", params)


def purge_rate_hits(conn: psycopg.Connection, limit: int) -> int:
    """Delete one batch of named-key hits older than the longest window a key may have."""
    return count(conn, "purge_rate_hits", {"secs": MAX_WINDOW_SECS, "limit": limit})


def purge_circuits(conn: psycopg.Connection, limit: int) -> int:
    """Delete one batch of shared circuits closed and untouched for a week."""
    return count(conn, "purge_circuits", {"limit": limit})
