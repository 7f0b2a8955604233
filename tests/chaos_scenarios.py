"""The fault scenarios, at any scale: tests/test_faults.py runs them small, scripts/chaos.py large.

Each starts its own strait processes against a private PostgreSQL (and Redis), drives a trigger
load through the public API, injects its fault, waits for every run to settle and returns the
`Ledger`: the caller asserts that it shows no problem.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psycopg

from tests.chaos_rig import (
    DEFAULT_LEASE,
    Answer,
    Ledger,
    PrivatePostgres,
    PrivateRedis,
    TriggerLoad,
    admin_headers,
    census,
    error_code,
    judge,
    label,
    make_job,
    slow_answer,
    wait_settled,
)
from tests.conftest import SECRET, Endpoint, Server, free_port, start_strait, stop_strait

Recording = Any  # the `endpoint` fixture or a chaos_rig.Recorder: .url, .requests, .behave


def _dir(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stop_all(servers: list[Server]) -> None:
    for s in servers:
        if s.proc.poll() is None:
            stop_strait(s, timeout=60)


def _bulk(base: str, job_id: str, markers: range) -> dict[int, str]:
    """Trigger `markers` with bulk requests of 500; marker -> run id."""
    out: dict[int, str] = {}
    with httpx.Client(base_url=base, headers=admin_headers(), timeout=60) as c:
        for start in range(markers.start, markers.stop, 500):
            chunk = list(range(start, min(start + 500, markers.stop)))
            r = c.post(f"/v1/jobs/{job_id}/trigger/bulk", json={"items": [{"payload": {"i": i}} for i in chunk]})
            r.raise_for_status()
            out.update(zip(chunk, (x["id"] for x in r.json()["results"]), strict=True))
    return out


def _non_503_5xx(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status >= 500 and a.status != 503]


def _check_answers(
    led: Ledger, answers: list[Answer], limit: float, what: str = "request", origin: float | None = None
) -> None:
    """Every answer is a 2xx, or a 503 with Retry-After, and came within `limit` seconds."""
    bad = _non_503_5xx(answers)
    if bad:
        led.problems.append(f"{len(bad)} {what}(s) answered another 5xx than 503: {sorted({a.status for a in bad})}")
    if any(a.status == 503 and not a.retry_after for a in answers):
        led.problems.append(f"a 503 without Retry-After ({what})")
    unanswered = [a for a in answers if a.status == 0]
    if unanswered:
        kinds = sorted({a.error for a in unanswered})
        led.problems.append(f"{len(unanswered)} {what}(s) got no HTTP answer at all: {kinds}")
    slow = [a.took for a in answers if a.took > limit]
    led.facts[f"slowest {what}"] = f"{max((a.took for a in answers), default=0):.2f} s"
    if slow:
        led.problems.append(f"{len(slow)} {what}(s) took longer than {limit:.1f} s (max {max(slow):.1f} s)")
        if origin is not None:  # when the slowest were sent, from the fault's start
            worst = sorted((a for a in answers if a.took > limit), key=lambda a: -a.took)[:5]
            led.facts[f"slowest {what}s (sent at +s: took s, answer)"] = [
                f"+{a.sent - origin:.1f}: {a.took:.1f} {label(a)}" for a in worst
            ]


# ----------------------------------------------------------------------------- 1. API killed -9


def api_kill(
    pg: PrivatePostgres, endpoint: Recording, tmp: Path, *, runs: int = 2000, kills: int = 1, concurrency: int = 64
) -> Ledger:
    """Keyed triggers retried by the client until a 2xx while the API process is killed -9 and
    restarted `kills` times: exactly one run per key, each completed and delivered."""
    # each port checked free (the worker's was port + 1, unchecked: it failed once, EADDRINUSE)
    port = free_port()
    worker_port = next(p for p in iter(free_port, None) if p != port)
    worker = start_strait(
        {"DATABASE_URL": pg.dsn, "PORT": str(worker_port), "WORKER_PORT": str(worker_port), **DEFAULT_LEASE},
        _dir(tmp, "worker"),
        mode="worker",
        processes=1,
    )
    api_env = {"DATABASE_URL": pg.dsn, "PORT": str(port)}
    apis = [start_strait(api_env, _dir(tmp, "api-0"), mode="api")]
    try:
        job = make_job(apis[0].base, endpoint.url)
        load = TriggerLoad(apis[0].base, job, keyed=True, retry=True, concurrency=concurrency)
        killed_at: list[int] = []

        async def chaos() -> None:
            for k in range(kills):
                await load.wait_acked(runs * (k + 1) // (kills + 1))
                victim = apis[-1]
                os.kill(victim.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(victim.proc.wait)
                killed_at.append(len(load.acks))
                apis.append(await asyncio.to_thread(start_strait, api_env, _dir(tmp, f"api-{k + 1}"), mode="api"))

        async def main() -> None:
            async with load:
                await asyncio.gather(load.fire(range(runs)), chaos())

        t0 = time.monotonic()
        asyncio.run(main())
        triggered = time.monotonic() - t0
        settle = wait_settled(pg.dsn, job, timeout=60 + runs / 50)
        led = judge("api killed -9 under keyed triggers", load, census(pg.dsn, job), endpoint.requests, bulk={})
        led.facts["kills (acknowledged at each)"] = killed_at
        led.facts["timing"] = f"triggers {triggered:.1f} s, settled {settle:.1f} s later"
        with psycopg.connect(pg.dsn) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT idempotency_key), count(*) FILTER (WHERE idempotency_key IS NULL)"
                " FROM job_runs WHERE job_id = %s",
                (job,),
            ).fetchone()
        assert row is not None
        if tuple(row) != (runs, runs, 0):
            led.problems.append(f"want one run per key ({runs}); runs, keys, keyless = {tuple(row)}")
        if led.acknowledged != runs:
            led.problems.append(f"only {led.acknowledged} of {runs} triggers were acknowledged at last")
        if led.duplicates:  # no fault touched a worker: nothing justifies a second call
            led.problems.append(f"{len(led.duplicates)} run(s) delivered more than once")
        if len(killed_at) != kills:
            led.problems.append(f"only {len(killed_at)} of {kills} kills happened")
        return led
    finally:
        _stop_all([*apis, worker])


# ----------------------------------------------------------------------------- 2. PostgreSQL restarted


@dataclass
class Outage:
    down: float  # time.time() when the fault began
    up: float = 0.0  # ... and when PostgreSQL answered again
    facts: dict[str, Any] = field(default_factory=dict)


def _recovery(out: Outage, load: TriggerLoad, rows: list[Any], rate: float) -> float | None:
    """Seconds from PostgreSQL's return until triggers are acknowledged again and runs are claimed
    at half the offered rate or more (a 1 s window); None if that never happened."""
    acks = sorted(a.sent + a.took for a in load.answers if 200 <= a.status < 300 and a.sent + a.took >= out.up)
    claims = sorted(r.started_at for r in rows if r.started_at is not None and r.started_at >= out.up)
    if acks:
        out.facts["first acknowledgement"] = f"{acks[0] - out.up:.1f} s"
    if claims:
        out.facts["first claim"] = f"{claims[0] - out.up:.1f} s"
    if not acks or not claims:
        return None
    need = max(1, int(rate / 2))
    j = 0
    for i, t in enumerate(claims):
        while claims[j] < t - 1.0:
            j += 1
        if i - j + 1 >= need:
            return max(acks[0], t) - out.up
    return None


def pg_restart(
    pg: PrivatePostgres,
    endpoint: Recording,
    tmp: Path,
    *,
    in_flight: int = 1000,
    restarts: int = 1,
    outage: float = 3.0,
    rate: float = 100.0,
    call_secs: float = 1.0,
    between: float = 12.0,
    recovery_limit: float = 10.0,
) -> Ledger:
    """`in_flight` runs queued or executing and a steady stream of triggers (retried on 503, no
    idempotency key), then PostgreSQL stopped (fast) for `outage` s and started, `restarts` times."""
    server = start_strait({"DATABASE_URL": pg.dsn, **DEFAULT_LEASE}, _dir(tmp, "all"), processes=1)
    try:
        endpoint.behave = slow_answer(call_secs)
        job = make_job(server.base, endpoint.url)
        load = TriggerLoad(server.base, job, keyed=False, retry=True, concurrency=64, timeout=60)
        outages: list[Outage] = []
        bulk: dict[int, str] = {}

        async def chaos(stop: asyncio.Event) -> None:
            bulk.update(await asyncio.to_thread(_bulk, server.base, job, range(in_flight)))
            while len(endpoint.requests) < min(in_flight, 200):
                await asyncio.sleep(0.05)
            for k in range(restarts):
                if k:
                    await asyncio.sleep(between)
                out = Outage(time.time())
                outages.append(out)
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(outage)
                await asyncio.to_thread(pg.start)
                out.up = time.time()
            await asyncio.sleep(between)
            stop.set()

        async def main() -> None:
            stop = asyncio.Event()
            async with load:
                await asyncio.gather(load.stream(in_flight, rate, stop), chaos(stop))

        asyncio.run(main())
        settle = wait_settled(pg.dsn, job, timeout=120 + in_flight / 50)
        rows = census(pg.dsn, job)
        led = judge(f"PostgreSQL restarted {restarts}x under load", load, rows, endpoint.requests, bulk=bulk)
        _check_answers(led, load.answers, limit=35.0, what="trigger")
        during = [a for a in load.answers if any(o.down <= a.sent + a.took <= o.up for o in outages)]
        led.facts["answers while down"] = dict(sorted(_counts(during).items()))
        led.facts["settled after the load"] = f"{settle:.1f} s"
        for k, out in enumerate(outages):
            took = _recovery(out, load, rows, rate)
            back = f"{took:.1f} s" if took is not None else "never"
            firsts = ", ".join(f"{k} {v}" for k, v in out.facts.items())
            led.facts[f"outage {k + 1}"] = f"{out.up - out.down:.1f} s down; throughput back after {back} ({firsts})"
            if took is None or took > recovery_limit:
                led.problems.append(f"outage {k + 1}: throughput not back within {recovery_limit:.0f} s")
        led.facts["runs retried (attempt > 1)"] = sum(1 for r in rows if r.attempt > 1)
        return led
    finally:
        endpoint.behave = None
        _stop_all([server])


def _counts(answers: list[Answer]) -> dict[str, int]:
    return dict(Counter(label(a) for a in answers))


# ----------------------------------------------------------------------------- 3. PostgreSQL frozen


async def _watch_health(base: str, stop: asyncio.Event, detailed: bool) -> list[Answer]:
    """GET /health every 0.2 s (with the internal secret: the detailed form, which pings the
    database) and record how long each answer took."""
    seen: list[Answer] = []
    headers = {"X-Internal-Secret": SECRET} if detailed else {}
    async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=30)) as s:
        while not stop.is_set():
            sent, t0 = time.time(), time.monotonic()
            try:
                async with s.get("/health", headers=headers) as r:
                    await r.read()
                    seen.append(Answer(-1, r.status, None, sent, time.monotonic() - t0))
            except (aiohttp.ClientError, TimeoutError) as exc:
                seen.append(Answer(-1, 0, None, sent, time.monotonic() - t0, type(exc).__name__))
            await asyncio.sleep(0.2)
    return seen


async def _watch_runs(load: TriggerLoad, stop: asyncio.Event) -> list[Answer]:
    """A client polling its runs: GET /v1/runs/{id} of an acknowledged run, 8 at a time."""
    seen: list[Answer] = []

    async def lane(n: int, session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            ids = list(load.acks.values())
            if ids:
                sent, t0 = time.time(), time.monotonic()
                try:
                    run = ids[(n * 7919 + len(seen)) % len(ids)]
                    async with session.get(f"/v1/runs/{run}", headers=load.headers) as r:
                        await r.read()
                        body = await r.json(content_type=None)
                        took = time.monotonic() - t0
                        seen.append(Answer(-1, r.status, r.headers.get("Retry-After"), sent, took, error_code(body)))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    seen.append(Answer(-1, 0, None, sent, time.monotonic() - t0, type(exc).__name__))
            await asyncio.sleep(0.1)

    timeout = aiohttp.ClientTimeout(total=load.timeout)
    async with aiohttp.ClientSession(load.base, connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await asyncio.gather(*(lane(n, session) for n in range(8)))
    return seen


def pg_freeze(
    pg: PrivatePostgres,
    endpoint: Recording,
    tmp: Path,
    *,
    freeze: float = 15.0,
    freezes: int = 1,
    rate: float = 50.0,
    request_timeout: float = 5.0,
    call_secs: float = 0.5,
    before: float = 3.0,
    after: float = 5.0,
    health_limit: float = 1.0,
) -> Ledger:
    """Every PostgreSQL process SIGSTOPped for `freeze` s under a trigger stream (retried on 503,
    no key) and run polling: /health keeps answering within `health_limit`, every API request ends
    within REQUEST_TIMEOUT, and after SIGCONT every run completes."""
    env = {"DATABASE_URL": pg.dsn, "REQUEST_TIMEOUT_SECS": str(request_timeout), **DEFAULT_LEASE}
    server = start_strait(env, _dir(tmp, "all"), processes=1)
    try:
        endpoint.behave = slow_answer(call_secs)
        job = make_job(server.base, endpoint.url)
        load = TriggerLoad(server.base, job, keyed=False, retry=True, concurrency=64, timeout=request_timeout + 25)
        windows: list[tuple[float, float]] = []
        watched: dict[str, list[Answer]] = {}

        async def chaos(stop: asyncio.Event) -> None:
            while not endpoint.requests:  # the worker is up and dispatching
                await asyncio.sleep(0.05)
            for k in range(freezes):
                await asyncio.sleep(before if k == 0 else after)
                t = time.time()
                frozen = pg.freeze()
                try:
                    await asyncio.sleep(freeze)
                finally:
                    pg.thaw()
                windows.append((t, time.time()))
                led_facts[f"freeze {k + 1}"] = f"{frozen} PostgreSQL processes stopped for {freeze:.0f} s"
            await asyncio.sleep(after)
            stop.set()

        async def main() -> None:
            stop = asyncio.Event()
            async with load:
                results = await asyncio.gather(
                    load.stream(0, rate, stop),
                    chaos(stop),
                    _watch_health(server.base, stop, detailed=False),
                    _watch_health(server.base, stop, detailed=True),
                    _watch_runs(load, stop),
                )
            watched.update(health=results[2], detailed=results[3], reads=results[4])

        led_facts: dict[str, Any] = {}
        asyncio.run(main())
        settle = wait_settled(pg.dsn, job, timeout=120)
        rows = census(pg.dsn, job)
        led = judge(f"PostgreSQL frozen {freezes}x {freeze:.0f} s", load, rows, endpoint.requests, bulk={})
        led.facts.update(led_facts)
        limit = request_timeout + 1.5  # the server's timeout plus the answer's way back on a busy machine
        origin = windows[0][0] if windows else None
        # a trigger whose INSERT was on its way when PostgreSQL froze waits for the commit's
        # decision (a 503 for a run that then commits would let the client's retry double it):
        # it may be late, but only answered 2xx, its run there once (judged above), and logged
        in_doubt = server.logs().count("trigger outlived its deadline with its INSERT in flight")
        late = [a for a in load.answers if a.took > limit]
        led.facts["triggers answered late, after the thaw (INSERT in flight)"] = len(late)
        if any(not 200 <= a.status < 300 for a in late):
            led.problems.append(f"a late trigger answered other than 2xx: {sorted({a.status for a in late})}")
        if len(late) > in_doubt:
            led.problems.append(f"{len(late)} trigger(s) late, but only {in_doubt} had an INSERT in flight")
        _check_answers(led, [a for a in load.answers if a.took <= limit], limit, "trigger", origin)
        _check_answers(led, watched["reads"], limit, "run read", origin)
        _check_answers(led, watched["health"], health_limit, "/health")
        # the detailed form waits for the database up to its 0.8 s ping budget: ~1 s on a busy machine
        _check_answers(led, watched["detailed"], health_limit + 0.5, "/health with the secret")
        if any(a.status != 200 for a in watched["health"] + watched["detailed"]):
            led.problems.append("/health answered other than 200")
        led.facts["run reads"] = dict(sorted(_counts(watched["reads"]).items()))
        if any(a.status not in (200, 503) for a in watched["reads"]):
            led.problems.append(f"run reads answered other than 200 or 503: {led.facts['run reads']}")
        led.facts["settled after the load"] = f"{settle:.1f} s"
        led.facts["answers while frozen"] = dict(
            sorted(_counts([a for a in load.answers if any(s <= a.sent <= e for s, e in windows)]).items())
        )
        led.facts["runs retried (attempt > 1)"] = sum(1 for r in rows if r.attempt > 1)
        _after_the_fault(led, server, job)
        return led
    finally:
        endpoint.behave = None
        _stop_all([server])


def _after_the_fault(led: Ledger, server: Server, job: str) -> None:
    """Nothing is left wedged: a new trigger is acknowledged at once."""
    with httpx.Client(base_url=server.base, headers=admin_headers(), timeout=10) as c:
        r = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"i": -1}})
    if r.status_code != 201:
        led.problems.append(f"a trigger after the fault answered {r.status_code}")


# ----------------------------------------------------------------------------- 4. Redis down


async def _probe_limit(load: TriggerLoad, actor: str, first: int, n: int) -> list[int]:
    """`n` triggers from one caller, one after another: the statuses (does the limiter refuse?)."""
    load.headers = admin_headers(actor=actor)
    out = []
    for i in range(n):
        load.sent.add(first + i)
        out.append(await load.send(first + i))
    return out


def redis_outage(
    pg: PrivatePostgres,
    redis: PrivateRedis,
    endpoint: Recording,
    tmp: Path,
    *,
    outage: float = 30.0,
    outages: int = 1,
    rate: float = 40.0,
    limit: int = 20,
) -> Ledger:
    """Redis (the API rate limiter's store) stopped for `outage` s: triggers keep being acknowledged
    and their runs completed, and the limiter fails open while Redis is down (a caller over the limit
    is not refused) and limits again once it is back."""
    env = {"DATABASE_URL": pg.dsn, "REDIS_URL": redis.url, "TRIGGER_RATE_LIMIT_REQUESTS": str(limit)}
    server = start_strait(env, _dir(tmp, "all"), processes=1)
    try:
        job = make_job(server.base, endpoint.url, max_attempts=1)
        # the stream: every trigger its own caller (X-Actor-Id), so the low limit never refuses it
        load = TriggerLoad(
            server.base, job, keyed=False, retry=False, concurrency=32, timeout=60, actor_of=lambda m: f"load-{m}"
        )
        probe = TriggerLoad(server.base, job, keyed=False, retry=False, concurrency=1, timeout=60)
        probes: dict[str, list[int]] = {}
        base = 10_000_000

        async def chaos(stop: asyncio.Event) -> None:
            n = 2 * limit + 2  # enough to cross the limit even if a minute boundary resets the count
            probes["before"] = await _probe_limit(probe, "probe-before", base, n)
            for k in range(outages):
                await asyncio.sleep(2)
                await asyncio.to_thread(redis.stop)
                await asyncio.sleep(outage / 2)
                probes[f"down {k + 1}"] = await _probe_limit(probe, f"probe-down-{k}", base * (2 + 2 * k), n)
                await asyncio.sleep(outage / 2)
                await asyncio.to_thread(redis.start)
                await asyncio.sleep(2)
                probes[f"back {k + 1}"] = await _probe_limit(probe, f"probe-back-{k}", base * (3 + 2 * k), n)
            await asyncio.sleep(2)
            stop.set()

        async def main() -> None:
            stop = asyncio.Event()
            async with load, probe:
                await asyncio.gather(load.stream(0, rate, stop), chaos(stop))

        asyncio.run(main())
        settle = wait_settled(pg.dsn, job, timeout=60)
        load.acks.update(probe.acks)
        load.sent |= probe.sent
        load.answers += probe.answers
        led = judge(f"Redis down {outages}x {outage:.0f} s", load, census(pg.dsn, job), endpoint.requests, bulk={})
        _check_answers(led, load.answers, 10.0, "trigger")
        led.facts["settled after the load"] = f"{settle:.1f} s"
        for name, codes in probes.items():
            led.facts[f"one caller over the limit of {limit}, Redis {name}"] = dict(_counts_int(codes))
            refused = 429 in codes
            if name.startswith("down") and (refused or any(c != 201 for c in codes)):
                led.problems.append(f"Redis {name}: the limiter did not fail open: {dict(_counts_int(codes))}")
            if not name.startswith("down") and not refused:
                led.problems.append(f"Redis {name}: a caller over the limit was never refused")
        stream_codes = _counts([a for a in load.answers if a.marker < base])
        if set(stream_codes) != {"201"}:
            led.problems.append(f"the stream's triggers were not all acknowledged: {stream_codes}")
        logs = server.logs()
        led.facts["limiter log lines 'redis unavailable'"] = logs.count("rate limiter: redis unavailable")
        return led
    finally:
        _stop_all([server])


def _counts_int(codes: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for c in codes:
        out[c] = out.get(c, 0) + 1
    return out


__all__ = ["Endpoint", "api_kill", "pg_freeze", "pg_restart", "redis_outage"]
