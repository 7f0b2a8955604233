"""Debounce and batch windows: which triggers share a run, when it is due, and what a batch holds.

The rules are in the README ("Debounce and batch windows"); `store/windows.py` writes them.
A job has at most one of the two windows (validation). Only triggers over the API are windowed:
cron ticks, workflow steps and spawns make runs of their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

import orjson

from strait_actors.model import NewRun, RunOrigin, RunRequest, new_run
from strait_actors.payloads import PayloadError

DEBOUNCE: Final = "debounce"
BATCH: Final = "batch"
MAX_DEBOUNCE_WINDOWS: Final = 10  # a debounced run waits at most this many windows after its first trigger
MAX_DELAY_SECS: Final = 30 * 86_400  # ... and never more than this (the furthest a trigger may schedule)
MAX_BATCH_ITEMS: Final = 1000  # batch_max_size's bound, and the size of a batch when it sets none
MAX_BATCH_BYTES: Final = 4 * 1024 * 1024  # a batch's payload text; a fuller batch is queued, the next one opens
_HEAD: Final = b'{"items":['
_TAIL: Final = b"]}"


def kind(job: Mapping[str, Any]) -> str | None:
    """The job's window: DEBOUNCE, BATCH or None."""
    if (job.get("debounce_window_secs") or 0) > 0:
        return DEBOUNCE
    if (job.get("batch_window_secs") or 0) > 0:
        return BATCH
    return None


def max_delay_secs(job: Mapping[str, Any]) -> int:
    """How long after its first trigger a debounced run may be pushed out, at most."""
    return int(min(MAX_DEBOUNCE_WINDOWS * job["debounce_window_secs"], MAX_DELAY_SECS))


def batch_limit(job: Mapping[str, Any]) -> int:
    """The items that fill a batch (batch_max_size; 0 or none: MAX_BATCH_ITEMS)."""
    return int(job.get("batch_max_size") or MAX_BATCH_ITEMS)


def windowed_run(origin: RunOrigin, req: RunRequest, payload: str, payload_hash: str) -> NewRun:
    """The run a trigger of a windowed job would make: delayed to the end of the window (then the job's
    execution window, if any), under its window key; a debounced run is `triggered_by='debounce'`.
    With no key, the trigger shares the job-wide key ''."""
    job = origin.job
    which = kind(job)
    assert which is not None, "only jobs with a window have windowed runs"
    secs = job["debounce_window_secs"] if which == DEBOUNCE else job["batch_window_secs"]
    key = (req.debounce_key if which == DEBOUNCE else req.batch_key) or ""
    req = dataclasses.replace(req, scheduled_at=origin.now + timedelta(seconds=secs))
    if which == DEBOUNCE:
        origin = dataclasses.replace(origin, triggered_by=DEBOUNCE)
    run = new_run(origin, req, payload, payload_hash, None)
    return dataclasses.replace(run, window_key=f"{which}:{key}")


def check_batch_item(item: bytes) -> None:
    """A payload joins a batch as its canonical text, so `{"items":[a,b,…]}` built by joining texts must be
    the canonical form of that object (and hash as it would). orjson's output joins that way; a payload
    it cannot write (an integer beyond 64 bits) or that a batch would nest too deeply is refused."""
    try:
        whole = orjson.dumps({"items": [orjson.loads(item)]}, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONDecodeError):
        whole = b""
    if whole != _HEAD + item + _TAIL:
        raise PayloadError("payload cannot join a batch: integers beyond 64 bits or nesting deeper than 253 levels")


def first_batch(item: str) -> tuple[str, str]:
    """A new batch's payload text (its first item) and that text's hash."""
    text = _HEAD.decode() + item + _TAIL.decode()
    return text, hashlib.sha256(text.encode()).hexdigest()
