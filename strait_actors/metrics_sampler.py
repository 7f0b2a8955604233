"""What the database knows, sampled for `/metrics` by the process that serves the scrape: run
transitions drained from `run_transition_tally` (written by the transition seam, migration 0014)
every second, and the queue's depth, its oldest claimable run and the dead-letter depth from one
query every `DEPTH_SECS`. Never per scrape: a scrape reads files only (`metrics.exposition`).

The depth query counts index entries, so its cost grows with the runs it counts: behind 1,000,000
held and 1,000,000 delayed runs it took 70 ms, in three processes (a parallel query) on a 2-core
machine, every 10 s in every API process. It is background work:
- one API process of a program counts (`counts_depth`: the gauge is `mostrecent` across the
  program's processes);
- its connection plans no parallel query (one process, one core, however many runs);
- the next count waits at least `DEPTH_DUTY` times as long as the last one took, so counting never
  takes more than 1/DEPTH_DUTY of one core.

Many processes may drain the tally (API processes, a worker host's parent): each takes a disjoint
set of rows (DELETE … RETURNING), so their counters add up to the cluster's transitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import psycopg
from aiohttp import web

from strait_actors import internal_secret
from strait_actors.store.sql import q

log = logging.getLogger(__name__)

DRAIN_SECS = 1.0
DEPTH_SECS = 10.0
DEPTH_DUTY = 100
# the sampler's connection: no parallel query for its counts (see the module's docstring)
OPTIONS = "-c max_parallel_workers_per_gather=0"


def next_count(started: float, took: float) -> float:
    """When the next depth count is due: `DEPTH_SECS` after the last one started, or later when
    that one took long (`DEPTH_DUTY`)."""
    return started + max(DEPTH_SECS, took * DEPTH_DUTY)


class MetricsSampler:
    """One connection of its own; a failed pass is logged once and tried again next time."""

    def __init__(
        self, dsn: str, metrics: ModuleType, pool: Any = None, flush: Any = None, *, counts_depth: bool = True
    ) -> None:
        self.dsn = dsn
        self.metrics = metrics
        self.pool = pool  # the API's pool: its connections in use are a gauge
        self.flush = flush  # the API's request figures, handed to the metrics each pass
        self.depth_at = 0.0 if counts_depth else float("inf")  # other API processes never count (module doc)
        self.failing = False

    async def run(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                if self.flush is not None:  # first: it needs no database
                    self.flush()
                try:
                    if conn is None or conn.closed:
                        conn = None
                        conn = await self.connect()
                    await self.sample(conn)
                    self.failing = False
                except Exception as exc:  # the database away (or a bug): logged once, the next pass reconnects
                    if not self.failing:
                        log.warning("metrics sampler: %s", exc)
                    self.failing = True
                    if conn is not None:
                        await conn.close()
                    conn = None
                await asyncio.sleep(DRAIN_SECS)
        finally:  # cancelled with the app: the connection goes with it
            if conn is not None:
                await conn.close()

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, options=OPTIONS)

    async def sample(self, conn: psycopg.AsyncConnection[Any]) -> None:
        m = self.metrics
        cur = await conn.execute(q("drain_transition_tally"))
        for from_status, to_status, n in await cur.fetchall():
            m.RUN_TRANSITIONS.labels(from_status, to_status).inc(n)
        if self.pool is not None:
            stats = self.pool.get_stats()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            m.DB_POOL.labels("acquired").set(size - idle)
            m.DB_POOL.labels("idle").set(idle)
            m.DB_POOL.labels("max").set(self.pool.max_size)
        if (started := time.monotonic()) >= self.depth_at:
            self.depth_at = next_count(started, 0.0)  # a failed count is tried again then
            cur = await conn.execute(q("queue_depth"))
            depth: dict[str, int] = dict.fromkeys(QUEUE_STATUSES, 0)
            oldest = 0.0
            for status, n, age in await cur.fetchall():
                if status == "dead_letter":
                    m.DLQ_DEPTH.set(n)
                elif status == "oldest":
                    oldest = float(age or 0.0)
                else:
                    depth[status] = n
            for status, n in depth.items():
                m.QUEUE_DEPTH.labels(status).set(n)
            m.OLDEST_QUEUED.set(oldest)
            self.depth_at = next_count(started, time.monotonic() - started)


QUEUE_STATUSES = ("delayed", "queued", "dequeued", "executing", "waiting", "paused", "replay_staged")


async def metrics_response(
    request: web.Request, secret: str, json: Callable[[Any], web.Response], refuse: Callable[[], web.Response]
) -> web.Response:
    """`GET /metrics` (api.md §4.1), the API's and a worker host's small port's: every process of this
    program's series (`strait_actors.metrics`) for the internal secret (X-Internal-Secret or a bearer
    token), else `refuse()`; Prometheus text, or `{"content_type", "text"}` rendered by `json` when
    Accept is exactly application/json (the official client's `list_metrics`). Each app answers JSON
    and the refusal as its other routes do (the API in its error envelope)."""
    from strait_actors import metrics  # after runtime.metrics_dir chose the multiprocess directory

    if not internal_secret.shown(request, secret):
        return refuse()
    text = await asyncio.to_thread(metrics.exposition)  # files of every process: off the event loop
    if request.headers.get("Accept", "").strip() == "application/json":
        return json({"content_type": metrics.CONTENT_TYPE, "text": text.decode()})
    return web.Response(body=text, headers={"Content-Type": metrics.CONTENT_TYPE})
