"""The process supervisor: keeps N child OS processes alive (worker processes, or the API processes
beside the parent's), restarting one that dies with backoff.

It knows processes, not actors: each worker process builds its own actor tree
(`actors/tree.py`), so this module imports no actor code and `--mode api` stays actor-free.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)


SLOT_ENV = "STRAIT_PROCESS_SLOT"
PARENT_ENV = "STRAIT_PARENT_PID"


def pid_alive(pid: int) -> bool:
    """Whether a process of that pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ProcessSupervisor:
    """Keeps N processes alive: a process that dies is restarted with jittered backoff."""

    def __init__(
        self, count: int, argv: Sequence[str], env: dict[str, str], grace: float, role: str = "worker"
    ) -> None:
        self.count = count
        self.role = role
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
        # which of the N it is (a worker's poller takes its share of the small wake-ups: actors/poller.py)
        env = {**self.env, SLOT_ENV: f"{i}/{self.count}", PARENT_ENV: str(os.getpid())}
        self.procs[i] = subprocess.Popen(self.argv, env=env)
        log.info("%s process %d started (pid %d)", self.role, i, self.procs[i].pid)  # type: ignore[union-attr]

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
                log.warning(
                    "%s process %d (pid %d) exited with %s; restart in %.1f s", self.role, i, proc.pid, code, delay
                )
                _metrics_gone(proc.pid)
                self.procs[i] = None
                self.next_start[i] = time.monotonic() + delay

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def terminate(self) -> None:
        """Restart nothing more and SIGTERM every live process, once, without waiting (`stop` waits)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM every process (unless `terminate` did) and wait for them, up to `grace`, then kill."""
        self.terminate()
        deadline = time.monotonic() + self.grace
        for p in self.procs:
            if p is None:
                continue
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def worker_child_argv() -> list[str]:
    """The command line of one worker process: this interpreter, running its own actor tree."""
    return [sys.executable, "-m", "strait_actors.cli", "--worker-child"]


def api_child_argv() -> list[str]:
    """The command line of one more API process, sharing the parent's port."""
    return [sys.executable, "-m", "strait_actors.cli", "--api-child"]


def exit_with_parent(interval: float = 1.0) -> None:
    """In a child: stop (SIGTERM to itself: the usual graceful drain) once the parent that started it
    is gone, so a program killed with SIGKILL leaves no worker claiming runs and no API process
    holding its port. Checked once a second by a daemon thread. The parent's pid comes from the
    supervisor: a parent gone before this call would otherwise read as init."""
    parent = int(os.environ.get(PARENT_ENV) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("parent process %d is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="strait-parent-watch", daemon=True).start()


def _metrics_gone(pid: int) -> None:
    """Its live gauges leave the sums (imported here: metrics must load after runtime.metrics_dir)."""
    from strait_actors import metrics

    metrics.process_gone(pid)
