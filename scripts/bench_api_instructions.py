#!/usr/bin/env python3
"""CPU instructions the API process spends on one trigger, counted by valgrind's callgrind.

On a machine whose speed moves by a fifth from one minute to the next, a change of a few percent in
the API's CPU a trigger cannot be told from noise in `bench_e2e.py`'s figures. An instruction count
can: two runs of this script on the same tree agree to within about half a percent.

It starts `strait --mode api` under callgrind (embedded PostgreSQL in a fresh temp STRAIT_DATA_DIR;
only the API process is counted, not PostgreSQL), creates a project and a job, and sends --warm
triggers that are not counted. Then it zeroes the counters, sends --runs triggers from --clients
keep-alive connections (raw HTTP/1.1, each waiting for its answer), dumps the counters and prints
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
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench_e2e.py, beside this script, starts a benchmarked server the same way
sys.path.append(str(Path(__file__).resolve().parent))
from bench_e2e import SECRET, free_port, server_env

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def post(conn: Conn, path: str, body: Any, headers: bytes) -> tuple[int, Any]:
    """One POST on a keep-alive connection; the answer's status and JSON body."""
    reader, writer = conn
    data = json.dumps(body).encode()
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
        % (path.encode(), headers, len(data), data)
    )
    status, length = int((await reader.readline())[9:12]), 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, json.loads(await reader.readexactly(length))


async def connect(port: int, deadline: float) -> Conn:
    while True:
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("the API did not answer (see server.log in the data dir)") from None
            await asyncio.sleep(0.25)


async def drive(args: argparse.Namespace, port: int, pid: int) -> float:
    first = await connect(port, time.monotonic() + 300)
    auth = b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
    status, body = await post(first, "/v1/projects", {"id": "bench", "org_id": "bench", "name": "Bench"}, auth)
    if status != 201:
        raise SystemExit(f"project: {status} {body}")
    auth += b"X-Project-Id: bench\r\n"
    job = {"project_id": "bench", "name": "Noop", "slug": "noop", "endpoint_url": "http://127.0.0.1:9/job"}
    status, body = await post(first, "/v1/jobs", {**job, "max_attempts": 1, "timeout_secs": 30}, auth)
    if status != 201:
        raise SystemExit(f"job: {status} {body}")
    path = f"/v1/jobs/{body['id']}/trigger"
    conns = [first] + [await connect(port, time.monotonic() + 30) for _ in range(args.clients - 1)]

    async def client(conn: Conn, n: int) -> None:
        for i in range(n):
            status, answer = await post(conn, path, {"payload": {"i": i}}, auth)
            if status != 201:
                raise SystemExit(f"trigger: {status} {answer}")

    await asyncio.gather(*[client(c, args.warm // args.clients) for c in conns])
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    t = time.monotonic()
    await asyncio.gather(*[client(c, args.runs // args.clients) for c in conns])
    took = time.monotonic() - t
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
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
        took = asyncio.run(drive(args, port, server.pid))
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
