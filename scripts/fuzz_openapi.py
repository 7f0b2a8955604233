#!/usr/bin/env python3
"""schemathesis against a running strait, from the document it serves: tests/test_openapi.py's run
with many more examples. Every operation of GET /openapi.json, positive and negative cases, half of
them on real resources the script makes first through the API (two fresh projects `fz-<random>`,
jobs, runs, a key, an environment, a group); checks: no 5xx, and every answer's status code, media
type and body are the ones the document gives. Exit 1 on any failure, each printed with a curl
command that reproduces it.

    .venv/bin/python scripts/fuzz_openapi.py http://127.0.0.1:8080 --secret "$INTERNAL_SECRET"
    .venv/bin/python scripts/fuzz_openapi.py http://127.0.0.1:8080 --examples 500 --endpoint http://host:9000/job

Without --endpoint the fuzzed job is a worker-mode job nothing dispatches (the server's dispatch
reaches no machine of the script's); the SDK plane then answers 401 to every call (no run token).
It writes: use a server whose data may be changed (the projects it makes are its own).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the runner lives beside the tests: tests/openapi_fuzz.py

from tests.openapi_fuzz import api_world, run_schemathesis  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the server's base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--secret", default=os.environ.get("INTERNAL_SECRET"), help="default: $INTERNAL_SECRET")
    ap.add_argument("--examples", type=int, default=200, help="cases per operation and generation mode")
    ap.add_argument("--endpoint", help="a job endpoint URL the server can reach (default: a worker-mode job)")
    ap.add_argument("--seed", action="store_true", help="derandomize: the same cases every run")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.secret:
        print("fuzz_openapi: give --secret or set INTERNAL_SECRET", file=sys.stderr)
        return 2
    base = args.base.rstrip("/")
    doc = httpx.get(f"{base}/openapi.json", timeout=30).raise_for_status().json()
    world = api_world(base, args.secret, args.endpoint)
    report = run_schemathesis(doc, base, world, examples=args.examples, seed=args.seed)
    slowest = sorted(report.seconds.items(), key=lambda kv: -kv[1])[:5]
    print(f"{report.operations} operations, {report.requests} requests, {len(report.failures)} failing")
    print("slowest: " + ", ".join(f"{name} {secs:.1f} s" for name, secs in slowest))
    for failure in report.failures:
        print(f"\n{failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
