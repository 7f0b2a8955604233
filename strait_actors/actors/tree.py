"""The one place that wires a worker process's actor tree: its children, their ticks, the restart policy.

`children()` is the table: one row per child, in start order, with the interval at which the
clock ticks it. A new actor (Scheduler, WorkflowCoordinator, WebhookSender) joins the tree by
adding one row. `runtime.run_worker_child` is the only importer, so `--mode api` loads no actor code.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass

import pykka

from strait_actors import gcpolicy
from strait_actors.actors.base import TreeContext
from strait_actors.actors.beacon import Beacon
from strait_actors.actors.clock import Clock
from strait_actors.actors.dispatcher import DispatcherPool
from strait_actors.actors.poller import Poller
from strait_actors.actors.reaper import Reaper
from strait_actors.actors.scheduler import Scheduler
from strait_actors.actors.supervisor import ChildSpec, RestartPolicy, Supervisor
from strait_actors.messages import Tick
from strait_actors.settings import Settings

# one-for-one: 0.2 s doubling to 10 s between restarts; more than 10 in 60 s and the process exits 1
RESTART_POLICY = RestartPolicy(base_delay=0.2, max_delay=10.0, max_restarts=10, window=60.0)


@dataclass(frozen=True)
class Child:
    """One row of the tree: how to start the child, and how often the clock ticks it (None: never)."""

    spec: ChildSpec
    tick: float | None


def children(s: Settings) -> list[Child]:
    """The worker's children in start order (they stop in reverse)."""
    return [
        # dispatcher first: the poller asks it for capacity when it starts.
        # Its ticks heartbeat the leases in flight; its stop waits out the drain and the last writes.
        Child(
            ChildSpec("dispatcher", DispatcherPool.start, stop_timeout=s.worker_drain_timeout_secs + 20),
            tick=s.heartbeat_interval_secs,
        ),
        Child(ChildSpec("poller", Poller.start), tick=s.poller_interval_ms / 1000),  # the fallback to NOTIFY
        Child(ChildSpec("reaper", Reaper.start), tick=s.reaper_interval_secs),
        Child(ChildSpec("scheduler", Scheduler.start), tick=s.scheduler_interval_secs),
        # last: it reports the others, and stops first (a draining process is not taking work)
        Child(ChildSpec("beacon", Beacon.start), tick=s.heartbeat_interval_secs),
    ]


class WorkerTree:
    """One process's actor tree: supervisor, clock and children, as `children()` lists them."""

    def __init__(
        self, settings: Settings, dsn: str, worker_id: str | None = None, policy: RestartPolicy | None = None
    ) -> None:
        self.ctx = TreeContext(
            settings=settings, dsn=dsn, worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}"
        )
        self.clock = Clock(self.ctx.registry)
        self.children = children(settings)
        self.ctx.actors = tuple(c.spec.name for c in self.children)
        for child in self.children:
            if child.tick is not None:
                self.clock.every(child.tick, child.spec.name, Tick())
        self.policy = policy or RESTART_POLICY
        self.failed = threading.Event()
        self.ref: pykka.ActorRef[Supervisor] | None = None

    def start(self) -> None:
        """Start the supervisor, which starts the children in order and then the clock."""
        self.ref = Supervisor.start(self.ctx, self.clock, [c.spec for c in self.children], self.policy, self.failed)

    def stop(self) -> None:
        """Stop the children in reverse order, each within its own stop timeout."""
        if self.ref is not None:
            self.ref.stop(block=True, timeout=sum(c.spec.stop_timeout for c in self.children))
            self.ref = None


def run_worker(settings: Settings, dsn: str) -> int:
    """Run one actor tree until SIGTERM/SIGINT (exit 0) or escalation (exit 1)."""
    # The handlers only note the signal. A handler runs between two bytecodes of this thread, inside
    # any other handler too: one that took a lock (an Event's `set`) could wait for itself, when a
    # second signal came while the first was setting it (Ctrl-C pressed twice reaches the whole
    # process group, and the program's supervisor sends its own SIGTERM), and hang the process.
    asked = [0]  # the latest stop signal

    def note(signum: int, _frame: object) -> None:
        asked[0] = signum

    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGINT, note)
    tree = WorkerTree(settings, dsn)
    tree.start()
    gcpolicy.settle()  # freeze what start-up made; the older generations collected less often
    while not asked[0] and not tree.failed.is_set():
        tree.failed.wait(0.2)
    tree.stop()
    return 1 if tree.failed.is_set() else 0
