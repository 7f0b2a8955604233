"""`strait`: the one program. The server: `strait [serve] --mode all|api|worker`, `strait migrate`.
The client (`strait_actors/client/`): `strait login|health|stats|projects|keys|jobs|runs|dlq|events …`.

The first word that is not an option decides which: a client command goes to the client's parser,
anything else to the server's, unchanged. Each side imports only its own code, so a client command
does not pay for loading the server (psycopg, aiohttp, the runtime) and the server never loads rich.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

SERVER_COMMANDS = ("serve", "migrate")
CLIENT_COMMANDS = ("login", "health", "stats", "projects", "keys", "jobs", "runs", "dlq", "events")
# options that take a value, on either side: skipped when looking for the command word
_VALUE_OPTIONS = frozenset(
    {"--mode", "--config", "--processes", "--api-processes", "--url", "--api-key", "--project", "--output", "-o"}
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="strait",
        description="strait: a job orchestrator on PostgreSQL",
        epilog=f"client commands (they talk to a running server): {', '.join(CLIENT_COMMANDS)}; "
        "see 'strait COMMAND --help'",
    )
    ap.add_argument("command", nargs="?", choices=["serve", "migrate"], default="serve")
    ap.add_argument("--mode", choices=["all", "api", "worker"], default="all")
    ap.add_argument("--config", help="a TOML file of settings (environment variables still win)")
    ap.add_argument("--processes", type=int, help="worker processes (default: PROCESSES; 0 = per CPU, per two in all)")
    ap.add_argument("--api-processes", type=int, help="API processes sharing the port (default: API_PROCESSES, 1)")
    ap.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--api-child", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def command_word(argv: Sequence[str]) -> str | None:
    """The first argument that is neither an option nor an option's value."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith("-") and arg != "-":
            i += 2 if arg in _VALUE_OPTIONS else 1
            continue
        return arg
    return None


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    word = command_word(args_list)
    if word in CLIENT_COMMANDS:
        from strait_actors.client.commands import run

        return run(args_list)
    if word is not None and word not in SERVER_COMMANDS:
        known = ", ".join((*SERVER_COMMANDS, *CLIENT_COMMANDS))
        print(f"strait: unknown command {word!r} (commands: {known}; see 'strait --help')", file=sys.stderr)
        return 2
    return serve(argv)


def serve(argv: list[str] | None) -> int:
    import psycopg

    from strait_actors import runtime
    from strait_actors.settings import SettingsError, load

    args = parse(argv)
    try:
        settings = load(args.config)
    except SettingsError as exc:
        print(f"strait: {exc}", file=sys.stderr)
        return 2
    runtime.configure_logging(settings)
    if args.worker_child:
        return runtime.run_worker_child(settings)
    if args.api_child:
        return runtime.run_api_child(settings)
    for flag, value in (("--processes", args.processes), ("--api-processes", args.api_processes)):
        if value is not None and value < 1:
            print(f"strait: {flag}: must be at least 1", file=sys.stderr)
            return 2
    try:
        if args.command == "migrate":
            p = runtime.prepare(settings)
            print(f"migrations applied; database ready ({'embedded' if p.embedded_pg else 'DATABASE_URL'})")
            return 0
        return runtime.run(args.mode, settings, args.processes, args.api_processes)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        print(f"strait: cannot use the database: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
