"""`strait`: the one program. `strait --mode all|api|worker`, `strait migrate`."""

from __future__ import annotations

import argparse
import sys

import psycopg

from strait_actors import runtime
from strait_actors.settings import SettingsError, load


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="strait", description="strait: a job orchestrator on PostgreSQL")
    ap.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    ap.add_argument("--mode", choices=["all", "api", "worker"], default="all")
    ap.add_argument("--config", help="a TOML file of settings (environment variables still win)")
    ap.add_argument("--processes", type=int, help="worker processes (default: CPU count)")
    ap.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        settings = load(args.config)
    except SettingsError as exc:
        print(f"strait: {exc}", file=sys.stderr)
        return 2
    runtime.configure_logging(settings)
    if args.worker_child:
        return runtime.run_worker_child(settings)
    if args.processes is not None and args.processes < 1:
        print("strait: --processes: must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.command == "migrate":
            p = runtime.prepare(settings)
            print(f"migrations applied; database ready ({'embedded' if p.embedded_pg else 'DATABASE_URL'})")
            return 0
        return runtime.run(args.mode, settings, args.processes)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        print(f"strait: cannot use the database: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
