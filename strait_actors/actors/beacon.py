"""The Beacon: tells the database, on a timer, that this worker process lives and which of its
actors do (`worker_heartbeats`, read by `GET /health/ready`).

One upsert per HEARTBEAT_INTERVAL_SECS per process, never per run. An actor counts as alive when
the registry holds its current ref and pykka says it runs: a child that died and waits out its
restart backoff reads as down. A clean stop deletes the row; a process killed outright leaves a
row that goes stale, which is what the readiness report shows for it.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime

from strait_actors.actors.base import TreeContext
from strait_actors.actors.sweeper import SweepActor
from strait_actors.messages import Tick
from strait_actors.store import workers
from strait_actors.store.errors import StoreError

log = logging.getLogger(__name__)


class Beacon(SweepActor):
    """Writes this process's liveness row each tick."""

    name = "beacon"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.started_at = datetime.now(UTC)
        self.purge_due = True  # day-old rows of other processes, once per start

    def started(self) -> None:
        """Open the connection and beat at once (not a tick later), purging day-old rows first."""
        super().started()
        self.actor_ref.tell(Tick())
        log.info("worker process %s: actors %s started", self.ctx.worker_id, ", ".join(self.ctx.actors))

    def actors(self) -> dict[str, str]:
        """Each actor of the tree: alive, or down (dead, or waiting for its restart)."""
        out = {}
        for name in self.ctx.actors:
            ref = self.ctx.registry.get(name)
            out[name] = "alive" if name == self.name or (ref is not None and ref.is_alive()) else "down"
        return out

    def sweep(self) -> None:
        conn = self.connection()
        if self.purge_due:
            workers.purge(conn)
            self.purge_due = False
        beat = workers.Beat(self.ctx.worker_id, socket.gethostname(), os.getpid(), self.started_at, self.actors())
        workers.beat(conn, beat)
        self.down = False

    def on_stop(self) -> None:
        """A clean stop: this process's row goes (best effort: a lost database keeps it, stale)."""
        if self.conn is not None and not self.conn.closed:
            try:
                workers.gone(self.conn, self.ctx.worker_id)
            except StoreError as exc:
                log.info("worker row not removed: %s", exc)
        super().on_stop()
