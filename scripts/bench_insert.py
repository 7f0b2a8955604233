#!/usr/bin/env python3
"""The trigger INSERT alone, on an embedded PostgreSQL: `store.insert_runs` as the API's
TriggerBatcher sends it, on a connection made as the API pool makes them (autocommit, dict rows,
prepared after five runs), against a fresh, migrated database.

For each statement size in --sizes (default 1, 12 and 500 runs: an idle trigger, a group of single
triggers under load, a bulk request), statements run back to back for --seconds. Prints the median
statement in ms, and PostgreSQL's CPU a run in us: the CPU time its backend used (from /proc),
divided by the runs written. That CPU figure moves far less between machines and runs than wall
time does. The client's own time (building the runs, dumping the arrays) is in the wall time only.

Compare two trees by running it from each with PYTHONPATH pointing at the tree.

usage: python scripts/bench_insert.py [--sizes 1,12,500] [--seconds 3] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from strait_actors import embedded, fsm, ids
from strait_actors.model import NewRun
from strait_actors.store import db
from strait_actors.store import runs as store

# the tests' job set-up; appended, so that PYTHONPATH still picks the strait_actors tree measured
sys.path.append(str(Path(__file__).resolve().parent.parent))
from tests.helpers import make_job

TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) the backend with this pid has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def new_run(job: str) -> NewRun:
    return NewRun(
        id=ids.uuid7(),
        job_id=job,
        project_id="p",
        status=fsm.S.QUEUED,
        priority=0,
        payload='{"i": 1}',
        payload_hash="h",
        tags={},
        metadata={},
        triggered_by="manual",
        scheduled_at=None,
        ttl_secs=None,
        idempotency_key=None,
        concurrency_key=None,
        batch_id=None,
        job_version=1,
        job_version_id="v",
        created_by=None,
        debug_mode=False,
        window_key=None,
    )


async def measure(dsn: str, job: str, size: int, seconds: float) -> str:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
        assert row is not None
        pid = int(row["pid"])
        for _ in range(10):  # prepared from the fifth on
            await store.insert_runs(conn, [new_run(job) for _ in range(size)])
        times: list[float] = []
        cpu0, end = backend_cpu(pid), time.monotonic() + seconds
        while time.monotonic() < end:
            runs = [new_run(job) for _ in range(size)]
            t = time.perf_counter()
            inserted = await store.insert_runs(conn, runs)
            times.append(time.perf_counter() - t)
            assert len(inserted) == size
        cpu = backend_cpu(pid) - cpu0
    written = len(times) * size
    return (
        f"insert of {size:>3} run(s): {len(times)} statements, median {statistics.median(times) * 1000:.3f} ms; "
        f"PostgreSQL CPU {cpu / written * 1e6:.1f} us a run"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,12,500")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=1, help="measure every size this many times, in turn")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="strait-bench-insert-") as tmp:
        admin, server = embedded.start_postgres(Path(tmp))
        try:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute("DROP DATABASE IF EXISTS bench_insert WITH (FORCE)")
                c.execute("CREATE DATABASE bench_insert")
            dsn = admin.replace("/postgres?", "/bench_insert?")
            db.migrate(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                job = make_job(conn, "http://127.0.0.1:9/x")
            for _ in range(args.rounds):
                for size in (int(s) for s in args.sizes.split(",")):
                    print(asyncio.run(measure(dsn, job, size, args.seconds)), flush=True)
        finally:
            server.cleanup()


if __name__ == "__main__":
    main()
