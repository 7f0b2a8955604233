"""One worker process's actor tree, and the process-level supervisor that keeps N of them alive."""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import pykka

from strait_actors.actors.base import TreeContext
from strait_actors.actors.clock import Clock
from strait_actors.actors.dispatcher import DispatcherPool
from strait_actors.actors.poller import Poller
from strait_actors.actors.reaper import Reaper
from strait_actors.actors.supervisor import ChildSpec, RestartPolicy, Supervisor
from strait_actors.messages import Tick
from strait_actors.settings import Settings

log = logging.getLogger(__name__)


class WorkerTree:
    """One process's actor tree: supervisor, clock and children, built by the composition root."""

    def __init__(
        self, settings: Settings, dsn: str, worker_id: str | None = None, policy: RestartPolicy | None = None
    ) -> None:
        self.ctx = TreeContext(
            settings=settings, dsn=dsn, worker_id=worker_id or f"{socket.gethostname()}:{os.getpid()}"
        )
        self.clock = Clock(self.ctx.registry)
        self.clock.every(settings.poller_interval_ms / 1000, "poller", Tick())
        self.clock.every(settings.heartbeat_interval_secs, "dispatcher", Tick())
        self.clock.every(settings.reaper_interval_secs, "reaper", Tick())
        grace = settings.worker_drain_timeout_secs + 20
        # dispatcher first: the poller asks it for capacity when it starts
        self.children = [
            ChildSpec("dispatcher", lambda c: DispatcherPool.start(c), stop_timeout=grace),
            ChildSpec("poller", lambda c: Poller.start(c)),
            ChildSpec("reaper", lambda c: Reaper.start(c)),
        ]
        self.policy = policy
        self.failed = threading.Event()
        self.ref: pykka.ActorRef[Supervisor] | None = None

    def start(self) -> None:
        self.ref = Supervisor.start(self.ctx, self.clock, self.children, self.policy, self.failed)

    def stop(self) -> None:
        if self.ref is not None:
            self.ref.stop(block=True, timeout=self.ctx.settings.worker_drain_timeout_secs + 40)
            self.ref = None


def run_worker(settings: Settings, dsn: str) -> int:
    """Run one actor tree until SIGTERM/SIGINT (exit 0) or escalation (exit 1)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tree = WorkerTree(settings, dsn)
    tree.start()
    while not stop.is_set() and not tree.failed.is_set():
        stop.wait(0.2)
    tree.stop()
    return 1 if tree.failed.is_set() else 0


class ProcessSupervisor:
    """Keeps N worker processes alive: a process that dies is restarted with jittered backoff."""

    def __init__(self, count: int, argv: Sequence[str], env: dict[str, str], grace: float) -> None:
        self.count = count
        self.argv = list(argv)
        self.env = env
        self.grace = grace
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self.next_start = [0.0] * count
        self.failures = [0] * count
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="strait-procs", daemon=True)

    def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)
        self.thread.start()

    def _spawn(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(self.argv, env=self.env)
        log.info("worker process %d started (pid %d)", i, self.procs[i].pid)  # type: ignore[union-attr]

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            for i, proc in enumerate(self.procs):
                if proc is None:
                    if time.monotonic() >= self.next_start[i]:
                        self._spawn(i)
                    continue
                code = proc.poll()
                if code is None:
                    continue
                self.failures[i] += 1
                delay = min(0.5 * 2 ** min(self.failures[i] - 1, 6), 30.0) * random.uniform(0.8, 1.2)
                log.warning("worker process %d (pid %d) exited with %s; restart in %.1f s", i, proc.pid, code, delay)
                self.procs[i] = None
                self.next_start[i] = time.monotonic() + delay

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def worker_child_argv() -> list[str]:
    return [sys.executable, "-m", "strait_actors.cli", "--worker-child"]
