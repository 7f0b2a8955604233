#!/usr/bin/env python3
"""The claim statement alone, on an embedded PostgreSQL: how long one claim of --limit runs takes.

Claims run on the claim connection (`queue.connect(claims=True)`), prepared as the Poller prepares
them. Each case gets a fresh, migrated database:

- cold:    --runs queued runs of one job; the claim's plan was made while job_runs was empty (as
           on a fresh install), then the runs are written (no ANALYZE);
- warm:    the same, after ANALYZE (the plan is made again with statistics);
- aside:   --runs runs of an `execution_mode: worker` job, which every claim sets aside (held);
- per-key: --runs runs, one concurrency key each, at max_concurrency_per_key=1;
- keyed:   --runs runs over 1,000 keys at max_concurrency_per_key=1, claimed until nothing is left
           (the total time of all claims; most runs are held back by their key's gate);
- backlog: --runs runs of an `execution_mode: worker` job already set aside (as claims leave them),
           --runs delayed a day ahead and --runs finished, after ANALYZE; then 200 claims, each of
           --limit runs written just before it (p99 too: the claim behind a backlog, issue 16).

Prints the median, min and max claim in ms (and the total for `keyed`). Compare two trees by running
it from each with PYTHONPATH pointing at the tree.

usage: python scripts/bench_claim.py [--runs 20000] [--limit 100] [--cases cold,warm,aside,per-key,keyed,backlog]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from strait_actors import embedded
from strait_actors.store import db, queue
from strait_actors.store.queue import Queue

# the tests' job set-up; appended, so that PYTHONPATH still picks the strait_actors tree measured
sys.path.append(str(Path(__file__).resolve().parent.parent))
from tests.helpers import make_job

ENDPOINT = "http://127.0.0.1:9/x"  # never called: claims only


def fresh_db(admin: str, name: str) -> str:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")
    dsn = admin.replace("/postgres?", f"/{name}?")
    db.migrate(dsn)
    return dsn


def write_runs(
    conn: psycopg.Connection, job: str, n: int, key: str | None, status: str = "queued", held: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO job_runs (id, job_id, project_id, status, held, payload_hash, concurrency_key, scheduled_at) "
        f"SELECT gen_random_uuid(), %s, 'p', %s, %s, 'h', {key or 'NULL'}, "
        "CASE WHEN %s = 'delayed' THEN now() + interval '1 day' END FROM generate_series(1, %s) g",
        (job, status, held, status, n),
    )


def behind_backlog(claims: Queue, conn: psycopg.Connection, runs: int, limit: int) -> list[float]:
    """The backlog case: ms of each of 200 claims of `limit` runs written just before it."""
    write_runs(conn, make_job(conn, ENDPOINT, execution_mode="worker"), runs, None, held="job")
    job = make_job(conn, ENDPOINT)
    write_runs(conn, job, runs, None, status="delayed")
    write_runs(conn, job, runs, None, status="completed")
    conn.execute("ANALYZE job_runs")
    out = []
    for _ in range(200):
        write_runs(conn, job, limit, None)
        out += claim_times(claims, limit, 1)
    return out


def claim_times(claims: Queue, limit: int, count: int | None) -> list[float]:
    """Claim `count` times, or until a claim takes nothing and promoted nothing; ms each. The claims
    are the Poller's: claim_runs, or claim_runs_plain while the last one met no gate."""
    out = []
    while count is None or len(out) < count:
        t = time.perf_counter()
        got = claims.claim(limit)
        out.append((time.perf_counter() - t) * 1000)
        if count is None and not got.runs and not got.promoted:
            break
    return out


def case(admin: str, name: str, runs: int, limit: int) -> str:
    dsn = fresh_db(admin, "bench_claim")
    conn = queue.connect(dsn, claims=True)
    claims = Queue(conn, worker_id="bench", lease_secs=60)
    try:
        claim_times(claims, limit, 6)  # prepared (Queue.claim prepares its statements) on the empty table
        with psycopg.connect(dsn, autocommit=True) as conn:
            if name == "backlog":
                ts = behind_backlog(claims, conn, runs, limit)
                p99 = sorted(ts)[int(len(ts) * 0.99) - 1]
                return f"{name}: median {statistics.median(ts):.2f} ms, p99 {p99:.2f}, max {max(ts):.2f}"
            if name in ("cold", "warm"):
                write_runs(conn, make_job(conn, ENDPOINT), runs, None)
            elif name == "aside":
                write_runs(conn, make_job(conn, ENDPOINT, execution_mode="worker"), runs, None)
            elif name == "per-key":
                write_runs(conn, make_job(conn, ENDPOINT, max_concurrency_per_key=1), runs, "'k' || g")
            else:
                write_runs(conn, make_job(conn, ENDPOINT, max_concurrency_per_key=1), runs, "'k' || (g %% 1000)")
            if name != "cold":
                conn.execute("ANALYZE job_runs")
        ts = claim_times(claims, limit, None if name == "keyed" else 40)
    finally:
        conn.close()
    total = f" total {sum(ts):.0f} ms over {len(ts)} claims;" if name == "keyed" else ""
    return f"{name}:{total} median {statistics.median(ts):.2f} ms, min {min(ts):.2f}, max {max(ts):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--cases", default="cold,warm,aside,per-key,keyed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="strait-bench-claim-") as tmp:
        admin, server = embedded.start_postgres(Path(tmp))
        try:
            for name in args.cases.split(","):
                print(f"claim {args.limit} of {args.runs} runs, {case(admin, name, args.runs, args.limit)}", flush=True)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
