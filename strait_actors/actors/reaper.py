"""The Reaper: runs whose worker died (lease expired) go back to the queue or end `crashed`;
runs never started whose TTL passed end `expired`. One bounded batch per tick."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from strait_actors.actors.base import SupervisedActor, TreeContext
from strait_actors.messages import Tick
from strait_actors.store import queue

log = logging.getLogger(__name__)


class Reaper(SupervisedActor):
    """Sweeps for lost leases and expired runs; safe in many processes (SKIP LOCKED, fenced)."""

    name = "reaper"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.conn: psycopg.Connection | None = None

    def started(self) -> None:
        """Open the sweep connection."""
        self.conn = queue.connect(self.ctx.dsn)

    def cleanup(self) -> None:
        """Close the sweep connection."""
        if self.conn is not None:
            self.conn.close()

    def on_receive(self, message: Any) -> None:
        """Each tick: one sweep."""
        if isinstance(message, Tick):
            self.sweep()

    def sweep(self) -> None:
        assert self.conn is not None
        reaped = queue.reap_lost_leases(self.conn)
        if reaped:
            log.warning("lost leases: %s", reaped)
        expired = queue.expire_runs(self.conn)
        if expired:
            log.info("expired %d run(s)", expired)
