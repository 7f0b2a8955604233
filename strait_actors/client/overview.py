"""The verbs about the connection and the whole: `login`, `health`, `stats`."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table
from rich.text import Text

from strait_actors import fsm
from strait_actors.client.config import Profile, config_path, write_config
from strait_actors.client.http import Api, ClientError, ServerError, UsageError
from strait_actors.client.output import status_text
from strait_actors.client.resources import verb

if TYPE_CHECKING:
    from strait_actors.client.commands import Context

HEALTH_TIMEOUT_SECS = 5.0  # a container health check must answer before its own probe timeout
PAGE = 100  # the API's largest page


# ----------------------------------------------------------------- login


def add_login(groups: Any, common: argparse.ArgumentParser) -> None:
    p = verb(groups, common, "login", "check and save the server URL, key and project for later commands", _login)
    p.add_argument("--no-verify", action="store_true", help="save without asking the server")


def _login(ctx: Context, args: argparse.Namespace) -> int:
    profile = ctx.profile
    if not profile.url:
        raise UsageError("login needs the server: give --url (or set STRAIT_BASE_URL)")
    key = profile.api_key
    if not key and sys.stdin.isatty():
        key = getpass.getpass("API key (or internal secret): ").strip() or None
    if not key:
        raise UsageError("login needs a credential: give --api-key (or set STRAIT_API_KEY)")
    profile = Profile(profile.url, key, profile.project)
    if not args.no_verify:
        _verify(Api(profile.url or "", key, profile.project))
    path = config_path(ctx.environ)
    try:
        write_config(path, profile)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    ctx.out.line(f"logged in to {profile.url}; saved in {path}")
    return 0


def _verify(api: Api) -> None:
    """One authenticated call: a 401 means the credential is wrong. Anything else means it was
    accepted (a 400 for a missing project, or a 403 for a key without jobs:read, comes after
    authentication)."""
    try:
        api.call("GET", "/v1/jobs", query={"limit": 1})
    except ServerError as exc:
        if exc.status == 401:
            raise ServerError(401, f"the server refused the credential: {exc}") from None
        if exc.status >= 500:
            raise


# ----------------------------------------------------------------- health


def add_health(groups: Any, common: argparse.ArgumentParser) -> None:
    p = verb(groups, common, "health", "is the server ready? exit 0 if so, 1 if not (for health checks)", _health)
    p.add_argument("--secret", help="the internal secret (else INTERNAL_SECRET): a detailed report")
    p.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_SECS, help="seconds to wait for the answer")


def _health(ctx: Context, args: argparse.Namespace) -> int:
    """`/health/ready`, no credential needed: without a configured URL it asks this machine's
    own server (127.0.0.1:$PORT), which is what a container's health check wants."""
    url = ctx.profile.url or f"http://127.0.0.1:{ctx.environ.get('PORT') or 8080}"
    secret = args.secret or ctx.environ.get("INTERNAL_SECRET")
    headers = {"X-Internal-Secret": secret} if secret else None
    try:
        reply = Api(url, None).call("GET", "/health/ready", headers=headers, timeout=args.timeout)
    except ClientError as exc:
        if isinstance(exc, UsageError):
            raise
        if ctx.out.json and isinstance(exc, ServerError) and exc.text.strip():
            print(exc.text.strip())  # the server's own answer ({"status":"not_ready"})
        print(f"strait: not ready: {exc}", file=sys.stderr)
        return 1
    ctx.out.record(reply)
    ready = isinstance(reply.data, dict) and reply.data.get("status") == "ready"
    return 0 if ready else 1


# ----------------------------------------------------------------- stats


def add_stats(groups: Any, common: argparse.ArgumentParser) -> None:
    p = verb(groups, common, "stats", "the project at a glance: jobs, runs by status, waiting events", _stats)
    p.add_argument("--job", help="count only this job's runs")
    p.add_argument("--max", type=int, default=1000, help="stop counting a status at this many (default 1000)")


def _count(api: Api, path: str, query: dict[str, Any], cap: int) -> tuple[int, bool]:
    """Items of a list, page by page (the API has no count route); True if it stopped at `cap`."""
    count, cursor = 0, None
    while True:
        body = api.call("GET", path, query={**query, "limit": PAGE, "cursor": cursor}).data
        count += len(body.get("data", []))
        if not body.get("has_more"):
            return count, False
        if count >= cap:
            return count, True
        cursor = body.get("next_cursor")


def _stats(ctx: Context, args: argparse.Namespace) -> int:
    if args.max < 1:
        raise UsageError("--max must be at least 1")
    api = ctx.api()
    server = api.call("GET", "/health").data
    runs: dict[str, int] = {}
    capped: list[str] = []
    for status in fsm.RunStatus:
        n, more = _count(api, "/v1/runs", {"status": status.value, "job_id": args.job}, args.max)
        runs[status.value] = n
        if more:
            capped.append(status.value)
    stats: dict[str, Any] = {"server": server, "runs_by_status": runs, "at_least": capped}
    if args.job is None:
        stats["jobs"], more = _count(api, "/v1/jobs", {}, args.max)
        stats["waiting_event_triggers"], more_events = _count(api, "/v1/events", {"status": "waiting"}, args.max)
        capped += ["jobs"] * more + ["waiting_event_triggers"] * more_events
    if ctx.out.json:
        ctx.out.data(stats)
    else:
        _stats_table(ctx, stats)
    return 0


def _stats_table(ctx: Context, stats: dict[str, Any]) -> None:
    server = stats["server"]
    ctx.out.line(
        Text.assemble("server ", status_text(str(server.get("status"))), f"  version {server.get('version', '?')}")
    )
    capped = set(stats["at_least"])

    def shown(name: str, n: int) -> str:
        return f"{n}+" if name in capped else str(n)

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    table.add_column("RUNS")
    table.add_column("COUNT", justify="right")
    for status, n in stats["runs_by_status"].items():
        if n or status in fsm.ACTIVE - {"dequeued", "replay_staged", "paused"}:
            table.add_row(status_text(status), shown(status, n))
    ctx.out.console.print(table)
    for name in ("jobs", "waiting_event_triggers"):
        if name in stats:
            ctx.out.line(f"{name.replace('_', ' ')}: {shown(name, stats[name])}")
