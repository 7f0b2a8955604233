"""One group of verbs per API resource: projects, keys, jobs, runs, dlq, events.

Each `add_<group>` adds the group's parser and its verbs; each verb's handler makes its call and
hands the answer to the Output (a table, or the server's JSON as sent). Only routes the server has
are offered (api.md §4 and `strait_actors/api/`). A workflows group, when the server has
workflows, is one more `add_workflows` here, listed in `commands.GROUPS`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strait_actors import fsm
from strait_actors.client import live
from strait_actors.client.http import UsageError, seg
from strait_actors.client.output import cols

if TYPE_CHECKING:
    from strait_actors.client.commands import Context

Handler = Callable[["Context", argparse.Namespace], int]

PROJECT_COLS = cols("ID:id", "ORG:org_id", "NAME:name", "PAUSED:paused", "CREATED:created_at")
KEY_COLS = cols("ID:id", "NAME:name", "PREFIX:key_prefix", "SCOPES:scopes", "EXPIRES:expires_at", "CREATED:created_at")
JOB_COLS = cols(
    "ID:id", "SLUG:slug", "NAME:name", "ENDPOINT:endpoint_url", "ENABLED:enabled", "PAUSED:paused", "VERSION:version"
)
RUN_COLS = cols(
    "ID:id", "JOB:job_id", "STATUS:status", "ATTEMPT:attempt", "BY:triggered_by", "CREATED:created_at", "ERROR:error"
)
EVENT_COLS = cols(
    "KEY:event_key",
    "STATUS:status",
    "SOURCE:source_type",
    "RUN:job_run_id",
    "REQUESTED:requested_at",
    "EXPIRES:expires_at",
)


# ----------------------------------------------------------------- parser helpers


def group(groups: Any, common: argparse.ArgumentParser, name: str, text: str) -> Any:
    parser = groups.add_parser(name, help=text, description=text, parents=[common])
    return parser.add_subparsers(dest="verb", metavar="VERB", required=True)


def verb(
    verbs: Any, common: argparse.ArgumentParser, name: str, text: str, handler: Handler
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(name, help=text, description=text, parents=[common])
    parser.set_defaults(handler=handler)
    return parser


def paged(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--limit", type=int, help="items per page (server default 50, at most 100)")
    parser.add_argument("--cursor", help="the page after this cursor (printed under a table that has more)")
    return parser


def page_query(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {"limit": args.limit, "cursor": args.cursor, **extra}


# ----------------------------------------------------------------- documents (job files, payloads)


def _jsonable(value: Any) -> Any:
    """YAML's dates and times become the ISO text JSON would carry; anything else is refused."""
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    raise TypeError(f"a YAML value JSON cannot hold: {type(value).__name__}")


def load_document(source: str) -> Any:
    """A YAML or JSON file ('-' is stdin), as plain JSON values."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not UTF-8 text") from None
    import yaml  # only job files and payload files need it: other commands start without it

    try:
        value = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{source} is not valid YAML: {problem}{where}") from None
    try:
        return json.loads(json.dumps(value, default=_jsonable))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{source}: {exc}") from None


def payload_of(args: argparse.Namespace) -> Any:
    if args.payload is not None and args.payload_file is not None:
        raise UsageError("give --payload or --payload-file, not both")
    if args.payload_file is not None:
        return load_document(args.payload_file)
    if args.payload is None:
        return None
    try:
        return json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not valid JSON: {exc.msg}") from None


def payload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--payload", help="the payload as JSON text")
    parser.add_argument("--payload-file", help="the payload from a JSON or YAML file ('-' for stdin)")


# ----------------------------------------------------------------- projects and keys


def add_projects(groups: Any, common: argparse.ArgumentParser) -> None:
    verbs = group(groups, common, "projects", "projects (the internal secret lists and creates them)")
    p = verb(verbs, common, "list", "the projects of an organisation", _projects_list)
    p.add_argument("--org", required=True, help="organisation id")
    verb(verbs, common, "get", "one project", _projects_get).add_argument("id")
    p = verb(verbs, common, "create", "create (or rename) a project", _projects_create)
    p.add_argument("id")
    p.add_argument("--org", required=True, help="organisation id")
    p.add_argument("--name", required=True)


def _projects_list(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.listing(ctx.api().call("GET", "/v1/projects", query={"org_id": args.org}), PROJECT_COLS, "no projects")
    return 0


def _projects_get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("GET", f"/v1/projects/{seg(args.id)}"))
    return 0


def _projects_create(ctx: Context, args: argparse.Namespace) -> int:
    body = {"id": args.id, "org_id": args.org, "name": args.name}
    ctx.out.record(ctx.api().call("POST", "/v1/projects", body=body))
    return 0


def add_keys(groups: Any, common: argparse.ArgumentParser) -> None:
    verbs = group(groups, common, "keys", "API keys of the project")
    paged(verb(verbs, common, "list", "the project's keys (never their secret part)", _keys_list))
    p = verb(verbs, common, "create", "a new key; its secret part is shown once", _keys_create)
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", default="*", help="comma-separated scopes (default '*': everything)")
    p.add_argument("--expires-in-days", type=int)
    verb(verbs, common, "revoke", "revoke a key", _keys_revoke).add_argument("id")


def _keys_list(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.listing(ctx.api().call("GET", "/v1/api-keys", query=page_query(args)), KEY_COLS, "no keys")
    return 0


def _keys_create(ctx: Context, args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    body: dict[str, Any] = {"project_id": ctx.project(), "name": args.name, "scopes": scopes}
    if args.expires_in_days is not None:
        body["expires_in_days"] = args.expires_in_days
    reply = ctx.api().call("POST", "/v1/api-keys", body=body)
    ctx.out.record(reply)
    if not ctx.out.json:
        ctx.out.note("keep the key now: the server shows it only this once")
    return 0


def _keys_revoke(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("DELETE", f"/v1/api-keys/{seg(args.id)}"))
    return 0


# ----------------------------------------------------------------- jobs


def add_jobs(groups: Any, common: argparse.ArgumentParser) -> None:
    verbs = group(groups, common, "jobs", "jobs: an HTTP endpoint with retries, timeouts and limits")
    p = paged(verb(verbs, common, "list", "the project's jobs, newest first", _jobs_list))
    p.add_argument("--slug", help="only the job with this slug")
    verb(verbs, common, "get", "one job", _jobs_get).add_argument("id")
    p = verb(verbs, common, "create", "create a job from a YAML or JSON file", _jobs_create)
    p.add_argument("-f", "--file", required=True, help="the job (api.md §4.3.1 fields); '-' for stdin")
    verb(verbs, common, "delete", "delete a job that has no active run", _jobs_delete).add_argument("id")
    p = verb(verbs, common, "trigger", "start a run of the job", _jobs_trigger)
    p.add_argument("id")
    payload_options(p)
    p.add_argument("--idempotency-key", help="a retried trigger with the same key makes no second run")
    p.add_argument("--wait", action="store_true", help="follow the run to its end; exit 0 only if it completed")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 1)")


def _jobs_list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.api().call("GET", "/v1/jobs", query=page_query(args, slug=args.slug))
    ctx.out.listing(reply, JOB_COLS, "no jobs")
    return 0


def _jobs_get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("GET", f"/v1/jobs/{seg(args.id)}"))
    return 0


def _jobs_create(ctx: Context, args: argparse.Namespace) -> int:
    job = load_document(args.file)
    if not isinstance(job, dict):
        raise UsageError(f"{args.file} must hold one job: a mapping of its fields")
    if not job.get("project_id"):
        job["project_id"] = ctx.project()
    ctx.out.record(ctx.api().call("POST", "/v1/jobs", body=job))
    return 0


def _jobs_delete(ctx: Context, args: argparse.Namespace) -> int:
    ctx.api().call("DELETE", f"/v1/jobs/{seg(args.id)}")
    if not ctx.out.json:
        ctx.out.line(f"job {args.id} deleted")
    return 0


def _jobs_trigger(ctx: Context, args: argparse.Namespace) -> int:
    if args.timeout is not None and (not args.wait or args.timeout <= 0):
        raise UsageError("--timeout needs --wait and a positive number of seconds")
    payload = payload_of(args)
    body = {} if payload is None else {"payload": payload}
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    api = ctx.api()
    receipt = api.call("POST", f"/v1/jobs/{seg(args.id)}/trigger", body=body, headers=headers)
    if not args.wait:
        ctx.out.record(receipt)
        return 0
    run_id = str(receipt.data["id"])
    if not ctx.out.json:
        ctx.out.note(f"run {run_id} {receipt.data.get('status')}")
    final = live.watch(api, ctx.out, run_id, args.timeout, quiet_json=True)
    _show_end(ctx, final)
    return live.outcome(final)


def _show_end(ctx: Context, run: dict[str, Any]) -> None:
    if ctx.out.json:
        ctx.out.data(run)
    else:
        live.summary(ctx.out, run)


# ----------------------------------------------------------------- runs and the dead-letter queue


def add_runs(groups: Any, common: argparse.ArgumentParser) -> None:
    verbs = group(groups, common, "runs", "runs of jobs")
    p = paged(verb(verbs, common, "list", "the project's runs, newest first", _runs_list))
    p.add_argument(
        "--status",
        action="append",
        choices=sorted(s.value for s in fsm.RunStatus),
        help="only runs in this status (repeatable)",
    )
    p.add_argument("--job", help="only runs of this job id")
    verb(verbs, common, "get", "one run", _runs_get).add_argument("id")
    verb(verbs, common, "cancel", "cancel a run that has not ended", _runs_cancel).add_argument("id")
    verb(verbs, common, "replay", "a new run from a failed, timed-out or crashed one", _runs_replay).add_argument("id")
    p = verb(verbs, common, "watch", "follow a run live to its end; exit 0 only if it completed", _runs_watch)
    p.add_argument("id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")


def _runs_list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.api().call("GET", "/v1/runs", query=page_query(args, statuses=args.status, job_id=args.job))
    ctx.out.listing(reply, RUN_COLS, "no runs")
    return 0


def _runs_get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("GET", f"/v1/runs/{seg(args.id)}"))
    return 0


def _runs_cancel(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("DELETE", f"/v1/runs/{seg(args.id)}"))
    return 0


def _runs_replay(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("POST", f"/v1/runs/{seg(args.id)}/replay"))
    return 0


def _runs_watch(ctx: Context, args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    final = live.watch(ctx.api(), ctx.out, args.id, args.timeout)
    if not ctx.out.json:
        live.summary(ctx.out, final)
    return live.outcome(final)


def add_dlq(groups: Any, common: argparse.ArgumentParser) -> None:
    verbs = group(groups, common, "dlq", "the dead-letter queue: runs whose attempts ran out")
    paged(verb(verbs, common, "list", "the project's dead-lettered runs", _dlq_list))
    p = verb(verbs, common, "replay", "put dead-lettered runs back in the queue (same id, attempt 1)", _dlq_replay)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="one run")
    which.add_argument("--all", action="store_true", help="every dead-lettered run of the project (up to --max)")
    p.add_argument("--max", type=int, default=500, help="with --all: at most this many runs (1-500)")


def _dlq_list(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.listing(ctx.api().call("GET", "/v1/runs/dlq", query=page_query(args)), RUN_COLS, "the queue is empty")
    return 0


def _dlq_replay(ctx: Context, args: argparse.Namespace) -> int:
    if not args.all:
        ctx.out.record(ctx.api().call("POST", f"/v1/runs/{seg(args.id)}/dlq-replay"))
        return 0
    body = {"project_id": ctx.project(), "limit": args.max}
    reply = ctx.api().call("POST", "/v1/runs/bulk-dlq-replay", body=body)
    if ctx.out.json:
        ctx.out.raw(reply)
    else:
        ctx.out.line(f"{reply.data.get('count', 0)} run(s) back in the queue")
    return 0


# ----------------------------------------------------------------- event triggers (durable waits)


def add_events(groups: Any, common: argparse.ArgumentParser) -> None:
    verbs = group(groups, common, "events", "event triggers: what runs wait for")
    p = paged(verb(verbs, common, "list", "the project's event triggers, newest first", _events_list))
    p.add_argument("--status", choices=("waiting", "received", "timed_out", "canceled"))
    verb(verbs, common, "get", "one event trigger", _events_get).add_argument("key")
    p = verb(verbs, common, "send", "deliver an event: what waits on the key goes on", _events_send)
    p.add_argument("key")
    payload_options(p)
    verb(verbs, common, "cancel", "cancel a waiting trigger (its run is canceled)", _events_cancel).add_argument("key")


def _events_list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.api().call("GET", "/v1/events", query=page_query(args, status=args.status))
    ctx.out.listing(reply, EVENT_COLS, "no event triggers")
    return 0


def _events_get(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("GET", f"/v1/events/{seg(args.key)}"))
    return 0


def _events_send(ctx: Context, args: argparse.Namespace) -> int:
    payload = payload_of(args)
    body = {} if payload is None else {"payload": payload}
    ctx.out.record(ctx.api().call("POST", f"/v1/events/{seg(args.key)}/send", body=body))
    return 0


def _events_cancel(ctx: Context, args: argparse.Namespace) -> int:
    ctx.out.record(ctx.api().call("DELETE", f"/v1/events/{seg(args.key)}"))
    return 0
