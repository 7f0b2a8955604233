"""Prometheus metrics (engine.md §12 names where one exists), for every process of the program.

Each process writes its series to files in one directory (prometheus_client's multiprocess mode,
`PROMETHEUS_MULTIPROC_DIR`, set by `runtime.metrics_dir` before this module is imported), so one
scrape of `/metrics` on the API port, or on a worker host's small port, sees every process the
program started. Import this module only after that: the value class is chosen at import.

Hot paths count in batches: a claim observes once, an outcome batch adds its runs' durations to a
histogram's buckets at once (`observe_many`), never a lock per run. Run transitions are counted in
the database by the transition seam (`run_transition_tally`, migration 0014) and drained into
`strait_run_transitions_total` by the process that serves the scrape (`MetricsSampler`), with the
queue's depth from one query on a timer, not per scrape.
"""

from __future__ import annotations

import bisect
import glob
import json
import logging
import os
import struct
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.mmap_dict import MmapedDict

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_LONG = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# --------------------------------------------------------------------------------------- runs
RUN_TRANSITIONS = Counter(
    "strait_run_transitions_total", "Run state transitions (every process's, drained from the database)", ["from", "to"]
)
RUN_DURATION = Histogram("strait_run_duration_seconds", "Dispatch start to outcome, per attempt", buckets=_LONG)
RUN_END_TO_END = Histogram("strait_run_end_to_end_seconds", "Run created to its outcome written", buckets=_LONG)
RETRIES = Counter("strait_worker_retry_total", "Attempts that failed and were queued again")
LEASE_RESCUES = Counter("strait_queue_heartbeat_reclaims_total", "Runs whose lease ran out, rescued by the reaper")
# ------------------------------------------------------------------------------------ the queue
QUEUE_DEPTH = Gauge("strait_queue_depth", "Runs by non-terminal status", ["status"], multiprocess_mode="mostrecent")
OLDEST_QUEUED = Gauge(
    "strait_queue_oldest_queued_age_seconds", "Age of the oldest claimable queued run", multiprocess_mode="mostrecent"
)
DLQ_DEPTH = Gauge("strait_dlq_depth", "Runs in dead_letter", multiprocess_mode="mostrecent")
CLAIM_DURATION = Histogram("strait_queue_claim_duration_seconds", "One claim statement", buckets=_LATENCY)
CLAIM_BATCH = Histogram("strait_queue_claim_batch_size", "Runs one claim took", buckets=_SIZES)
# ------------------------------------------------------------------------------------ dispatch
DISPATCH_DURATION = Histogram("strait_dispatch_duration_seconds", "The HTTP call to the endpoint", buckets=_LATENCY)
DISPATCH_STATUS = Counter(
    "strait_dispatch_response_status_total", "Dispatch answers by HTTP status (or `error`)", ["status"]
)
DISPATCH_ERRORS = Counter("strait_dispatch_errors_total", "Failed dispatches by error class", ["class"])
DISPATCH_REDIALS = Counter(
    "strait_dispatch_connect_redials_total", "Connects tried again: the endpoint dropped the SYN (accept queue full)"
)
# -------------------------------------------------------------------------------- the processes
ACTOR_RESTARTS = Counter("strait_actor_restarts_total", "Actors restarted by their supervisor", ["actor"])
DB_POOL = Gauge("strait_db_pool_conns", "API database pool connections", ["state"], multiprocess_mode="livesum")
HTTP_DURATION = Histogram(
    "strait_http_request_duration_seconds", "API requests by route and status", ["route", "status"], buckets=_LATENCY
)
HTTP_INFLIGHT = Gauge(
    "strait_http_inflight_requests", "API requests in progress (sampled each second)", multiprocess_mode="livesum"
)


# every error class's series from the start, at 0 (a rate over a series that appears late misses its first
# increments); engine.md §4.1's classes, and the ones strait adds
for _error_class in (
    "budget",
    "timeout",
    "oom",
    "rate_limited",
    "auth",
    "client",
    "server",
    "connection",
    "transient",
    "unknown",
):
    DISPATCH_ERRORS.labels(_error_class)


def observe_many(histogram: Any, values: Iterable[float]) -> None:
    """Observe many values with one increment per bucket touched: what `observe` does per value,
    summed (prometheus_client keeps per-bucket counts, not cumulative ones)."""
    bounds = histogram._upper_bounds
    counts: dict[int, int] = {}
    total = 0.0
    for v in values:
        i = bisect.bisect_left(bounds, v)
        counts[i] = counts.get(i, 0) + 1
        total += v
    if not counts:
        return
    histogram._sum.inc(total)
    for i, n in counts.items():
        histogram._buckets[i].inc(n)


class _Files(multiprocess.MultiProcessCollector):
    """Every process's files, read while processes come and go, and never a failed scrape for one
    file. A process creates its file empty and sizes it a moment later (prometheus_client issue
    1199): an empty file holds nothing yet (and one left empty by a process killed in that moment
    never will), so it is skipped. When the merge fails anyway (a file removed between the listing
    and the read by `process_gone`, or one damaged), the files are listed again and each is read on
    its own first: the ones that cannot be read are left out of this scrape, with a warning."""

    def _files(self) -> list[str]:
        files = []
        for name in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(name) >= 8:  # the header: bytes used, and padding
                    files.append(name)
            except OSError:
                continue
        return files

    def collect(self) -> Any:
        files = self._files()
        for tries in range(4):
            try:
                return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            except _UNREADABLE:
                if tries == 3:
                    raise
                files = [name for name in self._files() if _readable(name)]
        return []


_UNREADABLE = (OSError, ValueError, RuntimeError, struct.error)  # gone, bad keys, past its end, no header


def _readable(name: str) -> bool:
    try:
        for key, _, _, _ in MmapedDict.read_all_values_from_file(name):  # type: ignore[no-untyped-call]
            json.loads(key)
    except FileNotFoundError:
        return False
    except _UNREADABLE as exc:
        log.warning("metrics file %s left out of the scrape: %s", os.path.basename(name), exc)
        return False
    return True


def exposition() -> bytes:
    """Every process's series (multiprocess mode), else this process's."""
    path = os.environ.get(ENV)
    if not path:
        return generate_latest(DEFAULT_REGISTRY)
    registry = CollectorRegistry()
    _Files(registry, path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def process_gone(pid: int) -> None:
    """A process of the program exited: its live gauges leave the sums."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
