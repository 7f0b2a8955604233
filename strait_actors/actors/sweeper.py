"""The base of actors that make one bounded pass over their tables per clock tick (Reaper, Scheduler).

Each holds its own connection. A database outage is not a crash, which would spend the restart
budget the supervisor shares among the children: the pass is dropped with its connection, `down`
is set for the subclass to act on, and the next tick reconnects.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import psycopg

from strait_actors.actors.base import SupervisedActor, TreeContext
from strait_actors.messages import Tick
from strait_actors.store import queue
from strait_actors.store.errors import Unavailable

log = logging.getLogger(__name__)


class SweepActor(SupervisedActor, ABC):
    """One `sweep()` per Tick, on a connection that survives database outages."""

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.conn: psycopg.Connection | None = None
        self.down = False  # the database was lost; cleared by the subclass once it answers again

    def started(self) -> None:
        """Open the sweep connection."""
        self.conn = queue.connect(self.ctx.dsn)

    def cleanup(self) -> None:
        """Close the sweep connection."""
        if self.conn is not None:
            self.conn.close()

    def connection(self) -> psycopg.Connection:
        """The sweep connection, reconnected after an outage."""
        if self.conn is None or self.conn.closed:
            self.conn = queue.connect(self.ctx.dsn)
        return self.conn

    def on_receive(self, message: Any) -> None:
        """Each tick: one sweep."""
        if isinstance(message, Tick):
            try:
                self.sweep()
            except Unavailable as exc:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if not self.down:
                    log.warning("%s: database unavailable (%s); again when it answers", self.name, exc)
                self.down = True

    @abstractmethod
    def sweep(self) -> None:
        """One bounded pass (the subclass's work)."""
