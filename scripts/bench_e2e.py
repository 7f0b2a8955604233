#!/usr/bin/env python3
"""End-to-end benchmark of `strait --mode all`, measured from outside through the REST API only.

It starts strait once (embedded PostgreSQL in a fresh temp STRAIT_DATA_DIR, or --database-url) and
a no-op aiohttp endpoint in a separate process that counts deliveries (distinct X-Run-ID and total
hits) and records time.time() when it first sees each run. Over the public API (internal secret +
X-Project-Id) it creates project "bench" and a job (max_attempts 1) pointing at the endpoint, then:

- bulk:    N runs via POST /v1/jobs/{id}/trigger/bulk in requests of 500, sent one after another;
- single:  N runs via POST /v1/jobs/{id}/trigger from --clients concurrent clients;
  both time first trigger -> the endpoint has seen all N and the last run reads `completed`
  (runs/s), and for N >= 20000 compare the rate of the first half of runs with the second half
  (from the endpoint's first-seen times);
- latency: at idle, 200 single triggers 20 ms apart; latency = endpoint receive time - send time,
  and its parts (medians and p99s) from each run's created_at and started_at: send -> the INSERT's start,
  -> the claim's start, -> the endpoint's receipt;
- sdk (on its own): N runs by bulk trigger whose endpoint calls heartbeat, progress, log and complete
  through the SDK plane (plain HTTP): runs/s and SDK calls/s end to end;
- waits (on its own): N runs each park on a distinct event (wait-for-event), RSS is read while all
  are parked, then 32 clients send the N events: sends/s and resumes/s (every run dispatched again).
- limits (on its own): N runs of a job with max_concurrency=50 on a 100 ms endpoint (runs/s against
  the limit's ceiling of 500/s, and the peak concurrency the endpoint saw), then N runs over 1,000
  concurrency keys at max_concurrency_per_key=1 on the no-op endpoint (runs/s, peak per key);
- backlog (on its own): --backlog runs queued for an `execution_mode: worker` job (or a paused or a
  disabled one: --backlog-kind) and as many delayed a day ahead, then as many claimable ones: idle
  latency and the drain rate against the empty queue, claim p99 (/metrics) and the claim's plan (rows
  written straight into job_runs); idle latency is read at once, after autovacuum, and after a
  CHECKPOINT (the checkpoint that follows millions of rows written spreads its writes over minutes,
  and the commits' WAL flushes queue behind them); a paused or disabled job is then resumed (enabled):
  the request's time, and the rate its runs reach the endpoint at;
- cron (on its own): --cron-jobs jobs firing every minute; over --cron-minutes whole minutes, read
  from the database: every tick of every job fired once (no tick missed, none twice), the drift of
  each run's insert from its tick (p50/p99/max), and the Scheduler's own CPU (its log line).

Each scenario also prints the CPU it cost per run, by role, read from /proc (utime + stime): the
API, the workers and PostgreSQL (their sum: server CPU per run), and the harness's own load generator
and endpoint. This moves far less between machines than runs/s. --lean makes the harness lean, so
that its figures measure strait rather than the harness: its HTTP clients use raw keep-alive HTTP and
parse no JSON answer (the single and latency triggers, on asyncio Protocols; the sdk and waits
endpoint's calls to the SDK plane), and the harness and its endpoint run on uvloop (the endpoint
stays an aiohttp server). On 2 cores that halved the load generator's CPU a single trigger (73 to 35
us) and took a third off the endpoint's (116 to 80 us; means of 3 pairs).

A sampler thread reads VmRSS of the strait parent (api), its worker children and the endpoint from
/proc every 0.25 s; peak RSS, VmHWM and RSS at the start/end of each scenario are printed. The
script reports and exits 0; it does not judge. Example: python scripts/bench_e2e.py --runs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

SECRET = "bench-internal-secret-0123456789abcdef"
ALL = ("bulk", "single", "latency")  # --scenario all: the spine's figures (sdk and waits: on their own)
FAILED = {"failed", "timed_out", "crashed", "system_failed", "canceled", "expired", "dead_letter"}
HEADERS = {"Authorization": f"Bearer {SECRET}", "X-Project-Id": "bench", "X-Actor-Id": "bench"}
ENDPOINT = textwrap.dedent("""
    import asyncio, json, sys, time
    from aiohttp import web
    DELAY = float(sys.argv[2]) / 1000
    seen = {}  # run id -> time.time() of its first delivery
    hits = 0
    inflight, peak = 0, 0  # requests being served at once, and the most seen
    keyed, key_peak = {}, 0  # the same per concurrency key ("k" of the payload, when ?keyed=1)
    async def job(request):
        global hits, inflight, peak, key_peak
        body = await request.read()
        now = time.time()
        hits += 1
        seen.setdefault(request.headers.get("X-Run-ID", ""), now)
        delay, key = DELAY, None
        if request.query_string:  # the limits scenario: ?delay_ms=N, ?keyed=1
            delay = float(request.query.get("delay_ms", DELAY * 1000)) / 1000
            if "keyed" in request.query:
                key = json.loads(body).get("k")
                keyed[key] = keyed.get(key, 0) + 1
                key_peak = max(key_peak, keyed[key])
        inflight += 1
        peak = max(peak, inflight)
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            inflight -= 1
            if key is not None:
                keyed[key] -= 1
        return web.json_response({"ok": True})
    async def count(request):  # GET /count?all=1 adds the first-seen time of every run; ?reset=1 the peaks
        global peak, key_peak
        out = {"count": len(seen), "hits": hits, "seen": seen if "all" in request.query else {},
               "peak": peak, "key_peak": key_peak}
        if "reset" in request.query:
            peak, key_peak = inflight, 0
        return web.json_response(out)
    app = web.Application()
    app.add_routes([web.post("/job", job), web.get("/count", count)])
    loop = None
    if sys.argv[3:4] == ["lean"]:  # --lean: the same aiohttp server on uvloop
        sys.path.insert(0, sys.argv[4])  # the directory of bench_e2e.py
        from bench_e2e import lean_loop
        loop = lean_loop()()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, backlog=4096, loop=loop)
""")


# The endpoint of the sdk and waits scenarios: its code talks back over plain HTTP (one keep-alive
# session), as an endpoint written with aiohttp would. sdk: heartbeat, progress, log, complete, then
# 200 (dropped: the run is already completed). waits: the first dispatch parks the run on the event
# "w:<i>" and answers 200 (dropped: the run waits); the resumed dispatch answers 200 (completed).
SDK_ENDPOINT = textwrap.dedent("""
    import asyncio, json, sys, time
    import aiohttp
    from aiohttp import web
    from urllib.parse import urlsplit
    BASE, MODE, LEAN = sys.argv[2], sys.argv[3], sys.argv[4:5] == ["lean"]
    seen, resumed, calls, errors = {}, {}, 0, []
    session = None
    async def call(run, token, path, body=None):
        global calls
        if LEAN:
            status, text = await lean_post(f"/sdk/v1/runs/{run}/{path}", token, body)
        else:
            async with session.post(f"{BASE}/sdk/v1/runs/{run}/{path}", json=body,
                                    headers={"Authorization": "Bearer " + token}) as r:
                status = r.status
                text = await r.text() if status >= 300 else ""
        calls += 1
        if status >= 300:
            errors.append(f"{path} {status} {text[:200]}")
    # --lean: the same calls over raw keep-alive HTTP/1.1 connections (one per call in flight, reused),
    # the answer read by its Content-Length and not parsed (bench_e2e.LeanHTTP): a fraction of an
    # aiohttp client's CPU
    URL = urlsplit(BASE)
    HEAD = f"Host: {URL.netloc}\\r\\nContent-Type: application/json\\r\\nAuthorization: Bearer ".encode()
    lean = None
    if LEAN:
        sys.path.insert(0, sys.argv[5])  # the directory of bench_e2e.py
        from bench_e2e import LeanHTTP, lean_loop
        lean = LeanHTTP(URL.hostname, URL.port)
    async def lean_post(path, token, body):
        data = b"" if body is None else json.dumps(body).encode()
        status, answer = await lean.send(b"POST %s HTTP/1.1\\r\\n%s%s\\r\\nContent-Length: %d\\r\\n\\r\\n%s"
                                         % (path.encode(), HEAD, token.encode(), len(data), data))
        return status, answer.decode(errors="replace")
    async def job(request):
        body = await request.read()
        run, token = request.headers["X-Run-ID"], request.headers["X-Run-Token"]
        now = time.time()
        if MODE == "sdk":
            seen.setdefault(run, now)
            await call(run, token, "heartbeat")
            await call(run, token, "progress", {"percent": 50})
            await call(run, token, "log", {"level": "info", "message": "half way"})
            await call(run, token, "complete", {"result": {"ok": True}})
        elif request.headers.get("X-Resume-Event-Key"):
            resumed.setdefault(run, now)
        else:
            seen.setdefault(run, now)
            i = json.loads(body)["i"]
            await call(run, token, "wait-for-event", {"event_key": f"w:{i}", "timeout_secs": 3600})
        return web.json_response({"ok": True})
    async def count(request):
        return web.json_response({"count": len(seen), "hits": len(seen), "resumed": len(resumed), "calls": calls,
                                  "errors": errors[:5], "n_errors": len(errors),
                                  "seen": seen if "all" in request.query else {}})
    async def start(app):
        global session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async def stop(app):
        await session.close()
    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.add_routes([web.post("/job", job), web.get("/count", count)])
    loop = None
    if LEAN:  # --lean: the same aiohttp server on uvloop
        loop = lean_loop()()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, backlog=4096, loop=loop)
""")


def lean_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop factory: the --lean harness's loop (less CPU a request than asyncio's)."""
    import uvloop

    return uvloop.new_event_loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantile(xs: list[float], q: float) -> float:
    """The q-quantile of `xs` (the value at rank int(len * q) of the sorted list), NaN when empty."""
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def server_env(port: int, data: Path, log_level: str = "warn") -> dict[str, str]:
    """The environment of a benchmarked strait: its port, a fresh data dir (embedded PostgreSQL),
    fixed secrets, endpoints on localhost allowed, and no DATABASE_URL or REDIS_URL of the caller's."""
    env = dict(
        os.environ,
        PORT=str(port),
        STRAIT_DATA_DIR=str(data),
        INTERNAL_SECRET=SECRET,
        JWT_SIGNING_KEY="bench-jwt-signing-key-0123456789abcdef0123",
        ALLOW_PRIVATE_ENDPOINTS="true",
        LOG_LEVEL=log_level,
    )
    for k in ("DATABASE_URL", "REDIS_URL"):
        env.pop(k, None)
    return env


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in kB; {} once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in lines) if k in ("VmRSS", "VmHWM")}


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


class MemSampler(threading.Thread):
    """VmRSS of strait's parent (api), its worker children and the endpoint, every 0.25 s."""

    def __init__(self, api_pid: int, endpoint_pid: int) -> None:
        super().__init__(daemon=True)
        self.api_pid, self.roles = api_pid, {api_pid: "api", endpoint_pid: "endpoint"}
        self.peak: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.hwm: dict[int, int] = {}
        self.marks: list[tuple[str, dict[int, int]]] = []  # (scenario, RSS) at its start, then its end
        self.lock = threading.Lock()

    def sample(self) -> None:
        with self.lock:
            for c in children(self.api_pid):  # a restarted worker shows up as a new worker-N
                with contextlib.suppress(OSError):  # gone between listing and reading
                    if c not in self.roles and b"--worker-child" in Path(f"/proc/{c}/cmdline").read_bytes():
                        self.roles[c] = f"worker-{sum(r.startswith('worker') for r in self.roles.values()) + 1}"
            for pid in self.roles:
                if "VmRSS" in (st := proc_status(pid)):
                    self.last[pid], self.hwm[pid] = st["VmRSS"], st.get("VmHWM", 0)
                    self.peak[pid] = max(self.peak.get(pid, 0), st["VmRSS"])

    def run(self) -> None:
        while True:
            time.sleep(0.25)
            self.sample()

    def mark(self, label: str) -> None:
        self.sample()
        with self.lock:
            self.marks.append((label, dict(self.last)))

    def report(self) -> list[str]:
        self.sample()
        lines = []
        for pid, role in sorted(self.roles.items(), key=lambda x: x[1]):
            flow = " ".join(
                f"{a[0]} {a[1].get(pid, 0) / 1024:.0f}->{b[1].get(pid, 0) / 1024:.0f}"
                for a, b in zip(self.marks[::2], self.marks[1::2], strict=False)
            )
            lines.append(
                f"memory: {role:<9} pid={pid:<7} peak_rss_mib={self.peak.get(pid, 0) / 1024:.0f} "
                f"vmhwm_mib={self.hwm.get(pid, 0) / 1024:.0f}  rss_mib start->end: {flow}"
            )
        return lines


TICK = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid: int, *, reaped: bool = False) -> float | None:
    """utime + stime of a process in seconds (with `reaped`, also of its children it has waited
    for: a PostgreSQL backend that exits moves into its postmaster's cutime); None once gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if reaped else 0)) / TICK


class CpuMeter:
    """CPU seconds used by each role between two marks, read from /proc: the API (strait's parent and
    any child that is not a worker), the workers (`--worker-child` processes), PostgreSQL (postmaster
    with its reaped children plus every live backend), and the harness's own two parts: the load
    generator (this process) and the endpoint. Divided by the runs a scenario made, this moves far
    less between machines than runs/s does."""

    def __init__(self, strait_pid: int, endpoint_pid: int, base: str) -> None:
        self.strait_pid, self.endpoint_pid, self.base = strait_pid, endpoint_pid, base
        self.postmaster: int | None = None
        self.start: dict[str, float] = {}
        self.per_pid: dict[int, float] = {}

    def find_postgres(self, dsn: str) -> None:
        import psycopg  # strait's own dependency

        self.db = psycopg.connect(dsn, autocommit=True)
        backend = self.db.execute("SELECT pg_backend_pid()").fetchone()[0]
        stat = Path(f"/proc/{backend}/stat").read_text().rpartition(")")[2].split()
        self.postmaster = int(stat[1])  # a backend's parent is the postmaster

    def commits(self) -> int:
        """Transactions committed in strait's database so far (statements, near enough: strait's
        hot-path statements are each a transaction of their own)."""
        self.db.execute("SELECT pg_stat_clear_snapshot()")
        row = self.db.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(row.fetchone()[0])

    def claims(self) -> tuple[float, float]:
        """(claims, runs claimed) so far, from strait's /metrics (0, 0 from a build without it)."""
        got = dict.fromkeys(("count", "sum"), 0.0)
        for line in metrics_lines(self.base):
            for k in got:
                if line.startswith(f"strait_queue_claim_batch_size_{k} "):
                    got[k] = float(line.split()[1])
        return got["count"], got["sum"]

    def _pids(self) -> dict[int, str]:
        roles = {self.strait_pid: "api", self.endpoint_pid: "endpoint"}
        for c in children(self.strait_pid):
            with contextlib.suppress(OSError):
                roles[c] = "workers" if b"--worker-child" in Path(f"/proc/{c}/cmdline").read_bytes() else "api"
        return roles

    def read(self) -> tuple[dict[str, float], dict[int, float]]:
        """Per role: postgres as one sum (exited backends live on in the postmaster's cutime); the
        rest per process, so a process that ends between marks takes nothing back."""
        totals: dict[str, float] = {"postgres": 0.0}
        per_pid: dict[int, float] = {}
        for pid, role in self._pids().items():
            if (t := cpu_secs(pid)) is not None:
                per_pid[pid] = t
                totals.setdefault(role, 0.0)
        if self.postmaster is not None:
            totals["postgres"] = cpu_secs(self.postmaster, reaped=True) or 0.0
            totals["postgres"] += sum(cpu_secs(c) or 0.0 for c in children(self.postmaster))
        totals["load"] = cpu_secs(os.getpid()) or 0.0
        return totals, per_pid

    def mark(self) -> None:
        self.start, self.per_pid = self.read()
        self.t0, self.commits0, self.claims0 = time.monotonic(), self.commits(), self.claims()

    def since(self, label: str, runs: int) -> str:
        """Print and return the microseconds of CPU per run of each role since the last mark."""
        end, per_pid = self.read()
        roles = self._pids()
        used = {"api": 0.0, "workers": 0.0, "endpoint": 0.0}
        for pid, t in per_pid.items():
            if pid in roles:
                used[roles[pid]] += t - self.per_pid.get(pid, 0.0)
        used["postgres"] = end["postgres"] - self.start.get("postgres", 0.0)
        used["load"] = end["load"] - self.start.get("load", 0.0)
        us = {k: 1e6 * v / max(runs, 1) for k, v in used.items()}
        server = us["api"] + us["workers"] + us["postgres"]
        time.sleep(1.1)  # busy backends report their commits once a second
        commits = 1000 * (self.commits() - self.commits0) / max(runs, 1)
        claims, claimed = (a - b for a, b in zip(self.claims(), self.claims0, strict=True))
        per_claim, claims_1k = claimed / max(claims, 1), 1000 * claims / max(runs, 1)
        print(
            f"cpu: {label}: {runs} runs in {time.monotonic() - self.t0:.1f} s; per run: server {server:.0f} us "
            f"(api {us['api']:.0f}, workers {us['workers']:.0f}, postgres {us['postgres']:.0f}); harness: load "
            f"generator {us['load']:.0f} us, endpoint {us['endpoint']:.0f} us; {commits:.0f} commits and "
            f"{claims_1k:.0f} claims per 1,000 runs ({per_claim:.1f} runs per claim)",
            flush=True,
        )
        return (
            f"cpu_us_per_run={server:.0f} (api={us['api']:.0f} workers={us['workers']:.0f} "
            f"pg={us['postgres']:.0f} load={us['load']:.0f} endpoint={us['endpoint']:.0f}) "
            f"commits_per_1k={commits:.0f} runs_per_claim={per_claim:.1f}"
        )


# backlog scenario: runs as a trigger writes them, `n` at a time (delayed a day ahead, or queued)
BACKLOG_INSERT = """
INSERT INTO job_runs (id, job_id, project_id, status, payload, payload_hash, triggered_by, scheduled_at,
                      job_version, job_version_id, quota_counted)
SELECT gen_random_uuid(), j.id, j.project_id, CASE WHEN %(delayed)s THEN 'delayed' ELSE 'queued' END,
       json_build_object('i', g), md5(g::text), 'api', CASE WHEN %(delayed)s THEN now() + interval '1 day' END,
       j.version, j.version_id, false
FROM jobs j CROSS JOIN generate_series(1, %(n)s) g WHERE j.id = %(job)s
"""
# queued runs of the job that the claims have not yet set aside (held 'job')
BACKLOG_UNSET = "SELECT EXISTS (SELECT 1 FROM job_runs WHERE job_id = %(job)s AND status = 'queued' AND held IS NULL)"


def metrics_lines(base: str) -> list[str]:
    """strait's /metrics, line by line (none from a build without it)."""
    req = urllib.request.Request(f"{base}/metrics", headers={"X-Internal-Secret": SECRET})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read().decode().splitlines()
    except OSError:
        return []


def claim_histogram(base: str) -> dict[float, float]:
    """Cumulative counts of strait_queue_claim_duration_seconds by upper bound, from /metrics."""
    out: dict[float, float] = {}
    for line in metrics_lines(base):
        if line.startswith("strait_queue_claim_duration_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_p99(after: dict[float, float], before: dict[float, float]) -> str:
    """The buckets the median and the 99th percentile of the claims between two reads fall in."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta.get(float("inf"), 0.0)

    def bucket(q: float) -> str:
        return next((f"{le * 1000:g}" for le in sorted(delta) if delta[le] >= q * total), "?")

    return f"<= {bucket(0.99)} ms (p50 <= {bucket(0.5)} ms; {total:.0f} claims)" if total else "n/a"


# the vacuum of job_runs: running now, and how many dead row versions it has left to clear
VACUUM_STATE = """
SELECT (SELECT count(*) FROM pg_stat_progress_vacuum v WHERE v.relid = 'job_runs'::regclass),
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'job_runs'::regclass)
"""
# a checkpoint spreading its writes (after the backlog's millions of rows were written, the next one
# writes their pages): its I/O queues the commits' WAL flushes behind it
CHECKPOINTING = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'checkpointer' AND wait_event = 'CheckpointWriteDelay'"
)


def claim_plan(conn: Any, name: str = "claim_runs") -> list[str]:
    """A claim statement's plan (EXPLAIN, not run), on a claim connection's settings: how it reads
    each table (a Seq Scan here would walk the backlog)."""
    from strait_actors.store.queue import CLAIM_OPTIONS
    from strait_actors.store.sql import q

    for opt in CLAIM_OPTIONS.split():
        if "=" in opt:  # "-c name=value" pairs
            conn.execute("SELECT set_config(%s, %s, false)", opt.split("=", 1))
    params = {"limit": 100, "lease_id": uuid.uuid4(), "lease_secs": 20, "worker_id": "bench"}
    try:
        rows = conn.execute("EXPLAIN (COSTS OFF) " + q(name), params).fetchall()
    except KeyError:  # a build without this statement
        return ["n/a"]
    scans = [r[0].strip().removeprefix("->  ") for r in rows if "Scan" in r[0]]
    return [x for x in scans if not x.startswith(("CTE Scan", "Subquery Scan", "Function Scan"))]


async def check(r: aiohttp.ClientResponse) -> Any:
    body = await r.json(content_type=None)
    if r.status >= 300:
        raise SystemExit(f"{r.method} {r.url.path} answered {r.status}: {str(body)[:300]}")
    return body


async def answers(s: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with s.get(url) as r:
            return r.status < 500
    except aiohttp.ClientError:
        return False


async def make_bench_job(s: aiohttp.ClientSession, base: str, endpoint_url: str) -> str:
    """Project "bench" and its no-op job (one attempt a run) calling `endpoint_url`: the job's id."""
    await check(await s.post(f"{base}/v1/projects", json={"id": "bench", "org_id": "bench", "name": "Bench"}))
    job = {"project_id": "bench", "name": "Noop", "slug": "noop", "endpoint_url": endpoint_url}
    created = await check(await s.post(f"{base}/v1/jobs", json={**job, "max_attempts": 1, "timeout_secs": 30}))
    return str(created["id"])


class _LeanAnswer(asyncio.Protocol):
    """One keep-alive connection of the lean clients: the answer's head is cut at its blank line
    and only the status, Content-Length and Connection are read from it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.waiter.set_exception(SystemExit(f"lean client: no Content-Length in the answer: {head[:200]!r}"))
            return
        stop = head.find(b"\r\n", at + 17)
        total = end + 4 + int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(self.buf) < total:
            return
        answer = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(head[9:12]), b"\r\nconnection: close" in head, answer))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("lean client: connection closed before the answer"))


class LeanHTTP:
    """The --lean harness's HTTP client: requests prebuilt as bytes over raw keep-alive HTTP/1.1
    connections to one host (one per request in flight, reused), each an asyncio Protocol with no
    stream layer; the answer is read by its Content-Length and not parsed. It costs the harness a
    fraction of what an aiohttp client does, so the figures measure strait."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_LeanAnswer] = []

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of one request (its bytes whole: request line, headers, body)."""
        loop = asyncio.get_running_loop()
        if self.idle:
            conn = self.idle.pop()
        else:
            _, conn = await loop.create_connection(_LeanAnswer, self.host, self.port)
        assert conn.transport is not None
        conn.waiter = loop.create_future()
        conn.transport.write(request)
        status, close, answer = await conn.waiter
        if close:
            conn.transport.close()
        else:
            self.idle.append(conn)
        return status, answer

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


class LeanTrigger:
    """The --lean load generator: single triggers through `LeanHTTP`, the request prebuilt but for
    its body, the run id cut from the answer's bytes (no JSON parse)."""

    ID = re.compile(rb'"id":\s*"([^"]+)"')

    def __init__(self, base: str, job: str) -> None:
        url = urlsplit(base)
        self.http = LeanHTTP(url.hostname or "127.0.0.1", url.port or 80)
        head = [f"POST /v1/jobs/{job}/trigger HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in HEADERS.items()]
        self.head = ("\r\n".join(head) + "\r\nContent-Length: ").encode()

    async def __call__(self, i: int) -> str:
        body = b'{"payload":{"i":%d}}' % i
        status, answer = await self.http.send(self.head + b"%d\r\n\r\n" % len(body) + body)
        if status >= 300 or not (m := self.ID.search(answer)):
            raise SystemExit(f"POST trigger answered {status}: {answer[:300]!r}")
        return m.group(1).decode()

    def close(self) -> None:
        self.http.close()


class Bench:
    def __init__(self, s: aiohttp.ClientSession, base: str, ep: str, job: str, args: argparse.Namespace) -> None:
        self.s, self.base, self.ep, self.job, self.args = s, base, ep, job, args
        self.made = 0  # runs the last scenario made (the divisor of its CPU figures)
        self.lean = LeanTrigger(base, job) if args.lean else None

    async def count(self) -> dict[str, Any]:
        async with self.s.get(f"{self.ep}/count") as r:
            return dict(await r.json())

    async def seen(self) -> dict[str, float]:
        async with self.s.get(f"{self.ep}/count?all=1") as r:
            return dict((await r.json())["seen"])

    async def status(self, run_id: str) -> dict[str, Any]:
        async with self.s.get(f"{self.base}/v1/runs/{run_id}") as r:
            return dict(await check(r))

    async def wait_seen(self, label: str, ids: list[str], before: int, t0: float, deadline: float) -> None:
        """Until the endpoint has seen all `ids`; progress every 10 s; fail fast when runs fail."""
        next_print = time.monotonic() + 10
        while (seen := int((await self.count())["count"]) - before) < len(ids):
            if time.monotonic() > next_print:
                next_print += 10
                run = await self.status(ids[0])
                print(
                    f"{label}: ... endpoint saw {seen}/{len(ids)} after {time.monotonic() - t0:.0f} s; "
                    f"first run {run.get('status')}",
                    flush=True,
                )
                if run.get("status") in FAILED:
                    raise SystemExit(f"{label}: run {ids[0]} ended {run['status']}: {run.get('error')}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{label}: timed out: the endpoint saw {seen}/{len(ids)} runs")
            await asyncio.sleep(0.05)

    async def trigger_bulk(self, n: int, job: str = "", keys: int = 0) -> list[str]:
        """N runs through POST /trigger/bulk in requests of 500, one after another; their ids.
        With `keys`, run k has the concurrency key (and payload "k") k % keys."""
        ids: list[str] = []
        for i in range(0, n, 500):
            if keys:
                items = [
                    {"payload": {"k": k % keys}, "concurrency_key": f"k{k % keys}"} for k in range(i, min(n, i + 500))
                ]
            else:
                items = [{"payload": {"i": k}} for k in range(i, min(n, i + 500))]
            async with self.s.post(f"{self.base}/v1/jobs/{job or self.job}/trigger/bulk", json={"items": items}) as r:
                ids += [x["id"] for x in (await check(r))["results"]]
        return ids

    async def wait_completed(self, label: str, run_id: str, deadline: float) -> None:
        while (last := (await self.status(run_id)).get("status")) != "completed":
            if last in FAILED or time.monotonic() > deadline:
                raise SystemExit(f"{label}: run {run_id} is {last}, not completed")
            await asyncio.sleep(0.02)

    async def trigger(self, i: int) -> str:
        if self.lean is not None:
            return await self.lean(i)
        async with self.s.post(f"{self.base}/v1/jobs/{self.job}/trigger", json={"payload": {"i": i}}) as r:
            return str((await check(r))["id"])

    async def throughput(self, mode: str) -> str:
        n, before = self.args.runs, await self.count()
        ids: list[str] = []
        t0, t0_wall = time.monotonic(), time.time()
        if mode == "bulk":
            ids += await self.trigger_bulk(n)
        else:
            todo = iter(range(n))

            async def client() -> None:
                for k in todo:
                    ids.append(await self.trigger(k))

            await asyncio.gather(*[client() for _ in range(self.args.clients)])
        t_trig = time.monotonic() - t0
        deadline = time.monotonic() + 120 + n / 50 + n * self.args.endpoint_delay_ms / 1000 / 100

        await self.wait_seen(mode, ids, before["count"], t0, deadline)
        t_seen = time.monotonic() - t0
        await self.wait_completed(mode, ids[-1], deadline)
        total = time.monotonic() - t0
        after = await self.count()
        hits = after["hits"] - before["hits"]
        print(
            f"{mode}: triggered {n} in {t_trig:.2f} s ({n / t_trig:.0f}/s); endpoint saw all after "
            f"{t_seen:.2f} s; last run completed after {total:.2f} s; endpoint hits {hits} "
            f"(duplicates {hits - n})",
            flush=True,
        )
        if n >= 20000:
            seen = await self.seen()
            ts = sorted(seen[i] for i in ids if i in seen)
            h = len(ts) // 2
            first, second = ts[h - 1] - t0_wall, ts[-1] - ts[h - 1]
            r1, r2 = h / first, (len(ts) - h) / second
            print(
                f"{mode}: first half {h} runs in {first:.2f} s ({r1:.0f}/s), second half {len(ts) - h} in "
                f"{second:.2f} s ({r2:.0f}/s): second half rate {(r2 / r1 - 1) * 100:+.1f} % vs the first"
            )
        self.made = n
        return f"{mode}: runs_per_s={n / total:.0f} (N={n}, delay={self.args.endpoint_delay_ms}ms)"

    async def sdk(self) -> str:
        """Runs whose endpoint makes four SDK calls each (heartbeat, progress, log, complete)."""
        n, before = self.args.runs, await self.count()
        t0 = time.monotonic()
        ids = await self.trigger_bulk(n)
        deadline = time.monotonic() + 120 + n / 50
        await self.wait_seen("sdk", ids, before["count"], t0, deadline)
        await self.wait_completed("sdk", ids[-1], deadline)
        total = time.monotonic() - t0
        after = await self.count()
        calls = after["calls"] - before["calls"]
        print(
            f"sdk: {n} runs, {calls} SDK calls in {total:.2f} s: {n / total:.0f} runs/s, {calls / total:.0f} "
            f"SDK calls/s; SDK errors {after['n_errors']} {after['errors']}",
            flush=True,
        )
        self.made = n
        return f"sdk: runs_per_s={n / total:.0f} sdk_calls_per_s={calls / total:.0f} (N={n})"

    async def waits(self, mem: MemSampler) -> str:
        """Park N runs on distinct events, then send the N events from 32 clients."""
        n, before = self.args.runs, await self.count()
        mem.sample()
        rss_before = {role: mem.last.get(pid, 0) // 1024 for pid, role in mem.roles.items()}
        print(f"waits: RSS MiB before: {rss_before}", flush=True)
        t0 = time.monotonic()
        ids = await self.trigger_bulk(n)
        await self.wait_seen("waits", ids, before["count"], t0, time.monotonic() + 120 + n / 50)
        while True:  # the last wait-for-event answered: every run is parked
            async with self.s.get(f"{self.base}/v1/runs", params={"status": "executing", "limit": "1"}) as r:
                if not (await check(r))["data"]:
                    break
            await asyncio.sleep(0.1)
        parked = time.monotonic() - t0
        mem.sample()
        rss_parked = {role: mem.last.get(pid, 0) // 1024 for pid, role in mem.roles.items()}
        print(f"waits: {n} runs parked after {parked:.2f} s; RSS MiB while parked: {rss_parked}", flush=True)
        todo = iter(range(n))
        t1 = time.monotonic()

        async def sender() -> None:
            for k in todo:
                async with self.s.post(f"{self.base}/v1/events/w:{k}/send", json={"payload": {"k": k}}) as r:
                    await check(r)

        await asyncio.gather(*[sender() for _ in range(32)])
        t_sent = time.monotonic() - t1
        deadline = time.monotonic() + 120 + n / 50
        while (resumed := int((await self.count())["resumed"]) - before.get("resumed", 0)) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"waits: timed out: {resumed}/{n} resumed")
            await asyncio.sleep(0.05)
        t_resumed = time.monotonic() - t1
        await self.wait_completed("waits", ids[-1], deadline)
        mem.sample()
        rss_after = {role: mem.last.get(pid, 0) // 1024 for pid, role in mem.roles.items()}
        print(
            f"waits: {n} events sent from 32 clients in {t_sent:.2f} s ({n / t_sent:.0f}/s); every run resumed "
            f"(dispatched again) after {t_resumed:.2f} s: {n / t_resumed:.0f} resumes/s; RSS MiB after: {rss_after}",
            flush=True,
        )
        self.made = n
        return f"waits: sends_per_s={n / t_sent:.0f} resumes_per_s={n / t_resumed:.0f} (N={n})"

    async def make_job(self, slug: str, endpoint: str, **extra: Any) -> str:
        body = {
            "project_id": "bench",
            "name": slug,
            "slug": slug,
            "endpoint_url": endpoint,
            "max_attempts": 1,
            "timeout_secs": 30,
            **extra,
        }
        async with self.s.post(f"{self.base}/v1/jobs", json=body) as r:
            return str((await check(r))["id"])

    async def limits(self) -> str:
        """max_concurrency=50 on a 100 ms endpoint; then 1,000 keys at max_concurrency_per_key=1."""
        n, out = self.args.runs, []
        self.made = 0
        phases = (
            ("capped", f"{self.ep}/job?delay_ms=100", {"max_concurrency": 50}, 0),
            ("per-key", f"{self.ep}/job?delay_ms=0&keyed=1", {"max_concurrency_per_key": 1}, 1000),
        )
        for slug, url, limit, keys in phases:
            if self.args.limits_phase not in ("both", slug):
                continue
            job = await self.make_job(slug, url, **limit)
            before = await self.count()
            async with self.s.get(f"{self.ep}/count?reset=1"):
                pass
            t0 = time.monotonic()
            ids = await self.trigger_bulk(n, job, keys)
            t_trig = time.monotonic() - t0
            deadline = time.monotonic() + 120 + n / 20
            await self.wait_seen(f"limits {slug}", ids, before["count"], t0, deadline)
            await self.wait_completed(f"limits {slug}", ids[-1], deadline)
            total = time.monotonic() - t0
            after = await self.count()
            peak = after["key_peak"] if keys else after["peak"]
            what = f"peak per key {peak} (limit 1, {keys} keys)" if keys else f"peak at the endpoint {peak} (limit 50)"
            ceiling = " of a 500/s ceiling" if not keys else ""
            print(
                f"limits {slug}: {n} runs triggered in {t_trig:.2f} s, all completed after {total:.2f} s: "
                f"{n / total:.0f} runs/s{ceiling}; {what}; endpoint hits {after['hits'] - before['hits']}",
                flush=True,
            )
            out.append(f"{slug}_runs_per_s={n / total:.0f} {slug}_peak={peak}")
            self.made += n
        return f"limits: {' '.join(out)} (N={n})"

    async def cron(self, log: Path) -> str:
        """--cron-jobs jobs on `* * * * *`; judge --cron-minutes whole minutes from the database."""
        n, minutes = self.args.cron_jobs, self.args.cron_minutes
        todo = iter(range(n))

        async def creator() -> None:
            for k in todo:
                body = {
                    "project_id": "bench",
                    "name": f"Cron {k}",
                    "slug": f"cron-{k}",
                    "cron": "* * * * *",
                    "endpoint_url": f"{self.ep}/job",
                    "max_attempts": 1,
                    "timeout_secs": 30,
                }
                async with self.s.post(f"{self.base}/v1/jobs", json=body) as r:
                    await check(r)

        t0 = time.monotonic()
        await asyncio.gather(*[creator() for _ in range(16)])
        print(f"cron: {n} jobs created in {time.monotonic() - t0:.1f} s", flush=True)
        first = (int(time.time()) // 60 + 1) * 60  # the first whole minute after every job exists
        end = first + 60 * minutes
        await asyncio.sleep(end - time.time() + 10)  # the last tick's runs are in 10 s after it at most
        import psycopg  # strait's own dependency

        with psycopg.connect(self.args.dsn) as conn:
            rows = conn.execute(
                "SELECT r.job_id, split_part(r.idempotency_key, ':', 4)::bigint AS tick, "
                "extract(epoch FROM r.created_at) AS at FROM job_runs r "
                "WHERE r.triggered_by = 'cron' AND split_part(r.idempotency_key, ':', 4)::bigint >= %s "
                "AND split_part(r.idempotency_key, ':', 4)::bigint < %s",
                (first, end),
            ).fetchall()
            jobs = conn.execute("SELECT count(*) FROM jobs WHERE cron IS NOT NULL").fetchone()[0]
        expected = jobs * minutes
        distinct = len({(r[0], r[1]) for r in rows})
        drift = sorted(float(r[2]) - r[1] for r in rows)
        p50, p99 = quantile(drift, 0.5), quantile(drift, 0.99)
        cpu = [ln for ln in log.read_text(errors="replace").splitlines() if "scheduler: last" in ln]
        print(
            f"cron: {jobs} jobs x {minutes} minutes: {len(rows)} runs for {distinct} distinct ticks of {expected} "
            f"(missed {expected - distinct}, doubled {len(rows) - distinct}); drift from tick to insert: "
            f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {drift[-1]:.3f} s",
            flush=True,
        )
        for ln in cpu[-(minutes + 1) * 4 :]:
            print(f"cron: {ln.strip()[:200]}")
        self.made = len(rows)
        return f"cron: ticks={distinct}/{expected} doubled={len(rows) - distinct} drift_p99_s={p99:.3f} (jobs={jobs})"

    async def backlog(self, mem: MemSampler) -> str:
        """A million-run backlog (issue 16). Runs are written straight into job_runs (as a trigger
        writes them; the API would take minutes for millions): first the empty-queue figures (idle
        latency; the drain of 20,000 pre-queued runs), then --backlog runs queued for an
        `execution_mode: worker` job (no HTTP worker may take them), or a paused or disabled one
        (--backlog-kind), and as many delayed a day ahead, idle latency again (at once, after
        autovacuum, after a CHECKPOINT), then --backlog claimable runs drained; last, a paused or
        disabled job is resumed or enabled, and its runs drained. Claim p99 from /metrics."""
        import psycopg  # strait's own dependency

        n, kind = self.args.backlog, self.args.backlog_kind
        conn = psycopg.connect(self.args.dsn, autocommit=True)
        if kind == "worker":
            parked = await self.make_job("parked", f"{self.ep}/job", execution_mode="worker")
        else:  # a job of HTTP runs, paused or disabled before its backlog is written
            parked = await self.make_job("parked", f"{self.ep}/job")
            await self.hold_job(parked, kind, held=True)

        def fill(job: str, count: int, delayed: bool = False) -> float:
            t = time.monotonic()
            for done in range(0, count, 100000):
                conn.execute(BACKLOG_INSERT, {"job": job, "n": min(100000, count - done), "delayed": delayed})
            conn.execute("SELECT pg_notify('strait_queue_wake', '')")
            return time.monotonic() - t

        async def drain(label: str, count: int) -> float:
            before, claims = int((await self.count())["count"]), claim_histogram(self.base)
            took = fill(self.job, count)
            t0 = time.monotonic()
            await self.delivered(label, before, count, t0)
            rate = count / (time.monotonic() - t0)
            p99 = histogram_p99(claim_histogram(self.base), claims)
            print(
                f"backlog: {label}: {count} runs written in {took:.1f} s, drained at {rate:.0f} runs/s; claim p99 {p99}"
            )
            return rate

        lat0 = await self.idle("empty queue")
        base_rate = await drain("empty queue", 20000)
        t = fill(parked, n) + fill(self.job, n, delayed=True)
        t0 = time.monotonic()
        while conn.execute(BACKLOG_UNSET, {"job": parked}).fetchone()[0]:
            await asyncio.sleep(0.5)
        print(
            f"backlog: {n} unclaimable and {n} delayed runs written in {t:.1f} s; the claims set the "
            f"unclaimable aside in {time.monotonic() - t0:.1f} s",
            flush=True,
        )
        for name in ("claim_runs", "claim_runs_plain"):
            plan = claim_plan(conn, name)
            print(f"backlog: {name} plan with the backlog: " + "; ".join(plan), flush=True)
        vacuuming, dead = conn.execute(VACUUM_STATE).fetchone()
        print(f"backlog: at once (autovacuum of job_runs running: {bool(vacuuming)}, {dead} dead rows)", flush=True)
        lat_now = await self.idle("at once")
        # the steady state: once autovacuum has cleared what setting the backlog aside left behind
        t0 = time.monotonic()
        while (state := conn.execute(VACUUM_STATE).fetchone())[0] or state[1] > n // 10:
            if time.monotonic() - t0 > 900:
                break
            await asyncio.sleep(1)
        writing = (conn.execute(CHECKPOINTING).fetchone() or (0,))[0]
        print(
            f"backlog: after autovacuum ({time.monotonic() - t0:.0f} s later, {state[1]} dead rows; "
            f"a checkpoint writing: {bool(writing)})",
            flush=True,
        )
        lat_ckpt = await self.idle("with the backlog")
        # and once the checkpoint that follows the backlog's writes is done (CHECKPOINT finishes it at
        # once): what the backlog itself costs an idle trigger
        t0 = time.monotonic()
        conn.execute("CHECKPOINT")
        print(f"backlog: CHECKPOINT took {time.monotonic() - t0:.1f} s", flush=True)
        lat1 = await self.idle("with the backlog, after a checkpoint")
        mem.mark("backlog-drain")
        big_rate = await drain(f"{n} claimable behind the backlog", n)
        mem.mark("backlog-drain")
        released = ""
        if kind != "worker":  # the job resumed (enabled again): its whole backlog comes back
            released = " " + await self.release_backlog(parked, kind, n)
        conn.close()
        self.made = n + 20000 + 4 * 210 + (n if released else 0)
        return (
            f"backlog ({kind}): empty_drain={base_rate:.0f}/s backlog_drain={big_rate:.0f}/s "
            f"({(big_rate / base_rate - 1) * 100:+.1f} %){released} idle latency before [{lat0}] with backlog [{lat1}] "
            f"(at once [{lat_now}]; before the checkpoint [{lat_ckpt}])"
        )

    async def hold_job(self, job: str, kind: str, *, held: bool) -> float:
        """Pause or resume the job (`paused`), or disable or enable it (`disabled`), over the API; the
        request's time in seconds."""
        t0 = time.monotonic()
        if kind == "paused":
            async with self.s.post(f"{self.base}/v1/jobs/{job}/{'pause' if held else 'resume'}", json={}) as r:
                await check(r)
        else:
            async with self.s.patch(f"{self.base}/v1/jobs/{job}", json={"enabled": not held}) as r:
                await check(r)
        return time.monotonic() - t0

    async def delivered(self, label: str, before: int, n: int, t0: float) -> float:
        """Wait until the endpoint has seen n runs more than `before`; seconds from t0 to the first."""
        first = 0.0
        while (seen := int((await self.count())["count"]) - before) < n:
            if seen and not first:
                first = time.monotonic() - t0
            if time.monotonic() - t0 > 120 + n / 200:
                raise SystemExit(f"backlog: {label}: timed out ({seen} of {n} seen)")
            await asyncio.sleep(0.2)
        return first

    async def release_backlog(self, job: str, kind: str, n: int) -> str:
        """Resume (enable) the job whose n runs the claims set aside: how long the request takes, and
        how soon every one of those runs reaches the endpoint."""
        before = int((await self.count())["count"])
        took = await self.hold_job(job, kind, held=False)
        t0 = time.monotonic()
        first = await self.delivered("the released runs", before, n, t0)
        rate = n / (time.monotonic() - t0)
        verb = "resume" if kind == "paused" else "enable"
        print(
            f"backlog: the job's {verb} took {took * 1000:.0f} ms; its {n} runs reached the endpoint "
            f"from {first:.1f} s after it, all after {time.monotonic() - t0:.1f} s ({rate:.0f} runs/s)",
            flush=True,
        )
        return f"{verb}_ms={took * 1000:.0f} released_drain={rate:.0f}/s"

    async def idle(self, label: str) -> str:
        """The latency scenario after ten runs not measured, and the claims it made (one run each: the
        claim statement's own cost)."""
        # a few runs first, not measured: the first calls after a long quiet spell (the wait for
        # autovacuum) open connections and find cold caches, which says nothing about the backlog
        before, t0, warm = await self.count(), time.monotonic(), []
        for i in range(10):
            warm.append(await self.trigger(-2 - i))
            await asyncio.sleep(0.02)
        await self.wait_seen("warm-up", warm, before["count"], t0, time.monotonic() + 60)
        claims = claim_histogram(self.base)
        lat = await self.latency()
        p99 = histogram_p99(claim_histogram(self.base), claims)
        print(f"backlog: idle claims, {label}: claim p99 {p99}", flush=True)
        return f"{lat} claim_p99 {p99.split(' (')[0]}"

    def latency_parts(self, sent: dict[str, float], answered: dict[str, float], seen: dict[str, float]) -> str:
        """Where a trigger's latency goes, medians and p99s in ms, from the run's own timestamps (one clock:
        the harness and PostgreSQL share the machine): `insert` send -> created_at (the client, the
        API up to its INSERT's transaction start), `claim` created_at -> started_at (the INSERT and
        its commit, the NOTIFY, the poller's wake, up to the claim's transaction start), `dispatch`
        started_at -> the endpoint's receipt (the claim statement, the hand-off, the HTTP call), and
        `answer` send -> the trigger's answer at the client."""
        import psycopg  # strait's own dependency

        with psycopg.connect(self.args.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id::text, extract(epoch FROM created_at)::float8, extract(epoch FROM started_at)::float8 "
                "FROM job_runs WHERE id = ANY(%s::uuid[])",
                (list(sent),),
            ).fetchall()

        parts = {
            "insert": [c - sent[i] for i, c, _ in rows],
            "claim": [s - c for _, c, s in rows if s is not None],
            "dispatch": [seen[i] - s for i, _, s in rows if s is not None and i in seen],
            "answer": [answered[i] - sent[i] for i in sent],
        }
        return (
            "parts p50 "
            + ", ".join(f"{k} {quantile(v, 0.5) * 1000:.2f} ms" for k, v in parts.items())
            + "; p99 "
            + ", ".join(f"{k} {quantile(v, 0.99) * 1000:.2f} ms" for k, v in parts.items())
        )

    async def latency(self) -> str:
        n, before = 200, await self.count()
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        start = time.monotonic() + 0.1

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i * 0.02 - time.monotonic()))
            t = time.time()
            run = await self.trigger(i)
            sent[run], answered[run] = t, time.time()

        await asyncio.gather(*[one(i) for i in range(n)])

        await self.wait_seen("latency", list(sent), before["count"], start, time.monotonic() + 60)
        seen = await self.seen()
        lat = sorted((seen[i] - t) * 1000 for i, t in sent.items())
        p50, p99 = quantile(lat, 0.5), quantile(lat, 0.99)
        print(
            f"latency: {n} triggers 20 ms apart; min {lat[0]:.1f} ms, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
            f"max {lat[-1]:.1f} ms",
            flush=True,
        )
        print(f"latency: {await asyncio.to_thread(self.latency_parts, sent, answered, seen)}", flush=True)
        self.made = n
        return f"latency: p50_ms={p50:.1f} p99_ms={p99:.1f}"


async def bench(
    args: argparse.Namespace,
    port: int,
    eport: int,
    strait: subprocess.Popen[bytes],
    mem: MemSampler,
    cpu: CpuMeter,
    log: Path,
) -> list[str]:
    base, ep = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{eport}"
    async with aiohttp.ClientSession(
        headers=HEADERS,
        timeout=aiohttp.ClientTimeout(total=120),
        connector=aiohttp.TCPConnector(limit=max(args.clients, 10)),
    ) as s:
        deadline = time.monotonic() + 180
        for url in (f"{ep}/count", f"{base}/health"):
            while not await answers(s, url):
                if strait.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(errors="replace")[-3000:])
                    raise SystemExit(f"no answer from {url}")
                await asyncio.sleep(0.3)
        b = Bench(s, base, ep, await make_bench_job(s, base, f"{ep}/job"), args)
        t = time.monotonic()  # one run end to end first: the workers are up and dispatch works
        await b.wait_seen("warm-up", [await b.trigger(-1)], 0, t, t + 60)
        cpu.find_postgres(args.dsn)
        summary = []
        scraper = asyncio.ensure_future(scrape_metrics(base, args.scrape_every)) if args.scrape_every else None
        for sc in ("bulk", "single", "latency", "sdk", "waits", "limits", "cron", "backlog"):
            if args.scenario == sc or (args.scenario == "all" and sc in ALL):
                mem.mark(sc)
                cpu.mark()
                if sc == "latency":
                    summary.append(await b.latency())
                elif sc == "sdk":
                    summary.append(await b.sdk())
                elif sc == "waits":
                    summary.append(await b.waits(mem))
                elif sc == "backlog":
                    summary.append(await b.backlog(mem))
                elif sc == "cron":
                    summary.append(await b.cron(log))
                elif sc == "limits":
                    summary.append(await b.limits())
                else:
                    summary.append(await b.throughput(sc))
                summary[-1] += " " + cpu.since(sc, b.made)
                mem.mark(sc)
        await asyncio.sleep(1.0)  # late duplicates show in the final count
        if scraper is not None:
            scraper.cancel()
            took = await scraper
            took.sort()
            summary.append(
                f"metrics: {len(took)} scrapes every {args.scrape_every:g} s, p50 {1000 * took[len(took) // 2]:.1f} ms,"
                f" max {1000 * took[-1]:.1f} ms"
                if took
                else "metrics: no scrape answered"
            )
        if b.lean is not None:
            b.lean.close()
        c = await b.count()
        print(f"endpoint total: {c['hits']} hits for {c['count']} distinct runs (duplicates {c['hits'] - c['count']})")
        return summary


async def scrape_metrics(base: str, every: float) -> list[float]:
    """GET /metrics every `every` s while the scenarios run (as Prometheus would): how long each took,
    on a connection of its own (the load's pool is busy with triggers). Cancelled at the end, it
    returns what it measured."""
    took: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        try:
            while True:
                t = time.monotonic()
                async with s.get(f"{base}/metrics", headers={"X-Internal-Secret": SECRET}) as r:
                    await r.read()
                    if r.status == 200:
                        took.append(time.monotonic() - t)
                await asyncio.sleep(max(0.0, every - (time.monotonic() - t)))
        except asyncio.CancelledError:
            return took


def stop_group(p: subprocess.Popen[bytes], grace: float) -> None:
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=grace)
    except (OSError, subprocess.TimeoutExpired):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--database-url", default="", help="default: embedded PostgreSQL in a temp data dir")
    ap.add_argument("--endpoint-delay-ms", type=int, default=0)
    ap.add_argument(
        "--scenario",
        choices=["bulk", "single", "latency", "sdk", "waits", "limits", "cron", "backlog", "all"],
        default="all",
    )
    ap.add_argument("--backlog", type=int, default=1000000, help="backlog scenario: runs of each kind")
    ap.add_argument(
        "--backlog-kind",
        choices=["worker", "paused", "disabled"],
        default="worker",
        help="backlog scenario: the unclaimable runs' job: execution_mode worker, paused or disabled "
        "(the last two are resumed or enabled at the end, and their runs drained)",
    )
    ap.add_argument("--cron-jobs", type=int, default=10000, help="cron scenario: jobs firing every minute")
    ap.add_argument("--cron-minutes", type=int, default=2, help="cron scenario: whole minutes measured")
    ap.add_argument("--limits-phase", choices=["both", "capped", "per-key"], default="both", help="limits scenario")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients of the single scenario")
    ap.add_argument("--processes", type=int, help="passed to strait --processes")
    ap.add_argument("--strait", default=os.path.join(os.path.dirname(sys.executable), "strait"))
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir (server.log, database)")
    ap.add_argument(
        "--lean",
        action="store_true",
        help="lean harness clients: single triggers from the lean load generator, the sdk endpoint's calls over "
        "raw keep-alive HTTP",
    )
    ap.add_argument("--scrape-every", type=float, default=0, help="GET /metrics this often (s) during the run")
    args = ap.parse_args()
    port, eport = free_port(), free_port()
    data = Path(tempfile.mkdtemp(prefix="strait-bench-"))
    log = data / "server.log"
    env = server_env(port, data, "info" if args.scenario == "cron" else "warn")  # cron: the Scheduler's CPU line
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    # the cron scenario reads the database itself (the embedded server listens on a socket in its dir)
    args.dsn = args.database_url or f"postgresql://postgres:@/postgres?host={data / 'pg'}"
    cmd = [*args.strait.split(), "--mode", "all"] + (["--processes", str(args.processes)] if args.processes else [])
    procs: list[subprocess.Popen[bytes]] = []
    mem: MemSampler | None = None
    ok = False
    try:
        if args.scenario in ("sdk", "waits"):
            program = [SDK_ENDPOINT, str(eport), f"http://127.0.0.1:{port}", args.scenario]
        else:
            program = [ENDPOINT, str(eport), str(args.endpoint_delay_ms)]
        program += ["lean", str(Path(__file__).resolve().parent)] if args.lean else []
        procs.append(subprocess.Popen([sys.executable, "-c", *program], start_new_session=True))
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(cmd, env=env, cwd=data, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )
        mem = MemSampler(procs[1].pid, procs[0].pid)
        mem.start()
        cpu = CpuMeter(procs[1].pid, procs[0].pid, f"http://127.0.0.1:{port}")
        # --lean: the harness's own loop is uvloop too (strait's dependency, so it is installed)
        with asyncio.Runner(loop_factory=lean_loop() if args.lean else None) as runner:
            summary = runner.run(bench(args, port, eport, procs[1], mem, cpu, log))
        ok = True
    finally:
        try:
            for line in mem.report() if mem else []:
                print(line)
            bad = [
                ln
                for ln in (log.read_text(errors="replace") if log.exists() else "").splitlines()
                if any(w in ln for w in ("ERROR", "WARNING", "Traceback", "CRITICAL", "Error"))
            ]
            print(f"server log: {len(bad)} warning/error lines" + "".join(f"\n  {ln[:300]}" for ln in bad[:15]))
        finally:
            for p in reversed(procs):
                stop_group(p, 60)
            pidfile = data / "pg" / "postmaster.pid"  # embedded postgres runs in its own session
            with contextlib.suppress(OSError, ValueError, IndexError):
                pg = int(pidfile.read_text().split()[0])
                if b"postgres" in Path(f"/proc/{pg}/cmdline").read_bytes():
                    os.kill(pg, signal.SIGTERM)
            if args.keep or not ok:
                print(f"data dir kept: {data}")
            else:
                shutil.rmtree(data, ignore_errors=True)
    for line in summary:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
