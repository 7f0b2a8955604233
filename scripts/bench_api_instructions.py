#!/usr/bin/env python3
"""CPU instructions the API process spends on one trigger, counted by valgrind's callgrind.

On a machine whose speed moves by a fifth from one minute to the next, a change of a few percent in
the API's CPU a trigger cannot be told from noise in `bench_e2e.py`'s figures. An instruction count
can: two runs of this script on the same tree agree to within about half a percent.

It starts `strait --mode api` under callgrind (embedded PostgreSQL in a fresh temp STRAIT_DATA_DIR;
only the API process is counted, not PostgreSQL), creates a project and a job, and sends --warm
triggers that are not counted. Then it zeroes the counters, sends --runs triggers from --clients
keep-alive connections (bench_e2e's --lean client, each waiting for its answer), dumps the counters and prints
the instructions (Ir) a trigger. No worker runs: the runs stay queued.

With one client every trigger has its own INSERT, and the count is the most repeatable. With more,
the triggers share INSERT statements as under load, and the count moves by a few percent with
how they group.

Compare two trees by running it with --strait pointing at each one's installed `strait`. It needs
valgrind (Debian: `apt-get install valgrind`); the API runs about ten times slower under it.

usage: python scripts/bench_api_instructions.py [--runs 1000] [--clients 1] [--warm 100] [--strait PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

# bench_e2e.py, beside this script: the benchmarked server's environment, its job, the lean client
sys.path.append(str(Path(__file__).resolve().parent))
from bench_e2e import HEADERS, LeanTrigger, answers, free_port, make_bench_job, server_env


async def drive(args: argparse.Namespace, port: int, server: subprocess.Popen[bytes]) -> float:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(headers=HEADERS, timeout=aiohttp.ClientTimeout(total=120)) as s:
        deadline = time.monotonic() + 300
        while not await answers(s, f"{base}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the API did not answer (see server.log in the data dir)")
            await asyncio.sleep(0.3)
        trigger = LeanTrigger(base, await make_bench_job(s, base, "http://127.0.0.1:9/job"))

    async def client(n: int) -> None:
        for i in range(n):
            await trigger(i)

    try:
        await asyncio.gather(*[client(args.warm // args.clients) for _ in range(args.clients)])
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True, capture_output=True)
        t = time.monotonic()
        await asyncio.gather(*[client(args.runs // args.clients) for _ in range(args.clients)])
        took = time.monotonic() - t
        subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True, capture_output=True)
    finally:
        trigger.close()
    return took


def counted(out: Path) -> int:
    """Ir of the dump made after the measured triggers (the last part callgrind wrote)."""
    parts = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    if not parts:
        raise SystemExit("callgrind wrote no dump")
    for line in parts[-1].read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"no summary in {parts[-1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--warm", type=int, default=100, help="triggers sent first, not counted")
    ap.add_argument("--strait", default=os.path.join(os.path.dirname(sys.executable), "strait"))
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("this benchmark needs valgrind (Debian: apt-get install valgrind)")
    strait = Path(args.strait).absolute()
    python = strait.parent / "python"  # the venv's interpreter, so valgrind runs Python itself
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="strait-bench-ir-"))
    env = server_env(port, data)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = data / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(python), str(strait), "--mode", "api"]
    with open(data / "server.log", "wb") as log:
        server = subprocess.Popen(cmd, env=env, cwd=data, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ok = False
    try:
        took = asyncio.run(drive(args, port, server))
        n = args.runs // args.clients * args.clients
        print(
            f"API instructions a trigger: {counted(out) / n / 1000:.1f} k ({n} triggers from {args.clients} "
            f"client(s), {took:.1f} s under callgrind; {strait})"
        )
        ok = True
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if ok:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"kept {data} (server.log)")


if __name__ == "__main__":
    main()
