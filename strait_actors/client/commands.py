"""The client's command line: one argparse tree, one `Context` per invocation, one dispatch.

Each group of verbs (`projects`, `jobs`, `runs`, ...) is a function that adds its sub-parser and
sets each verb's handler; GROUPS lists them, so a new resource (workflows, once the server has
them) is one more function in `resources.py` and one more entry here. A handler takes the Context
and the parsed arguments and returns the exit code; whatever goes wrong is a ClientError, printed
by `run` as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from strait_actors.client import overview, resources
from strait_actors.client.config import Profile, resolve
from strait_actors.client.http import Api, ClientError, UsageError
from strait_actors.client.output import Output

Subparsers = Any  # argparse's _SubParsersAction is private; its add_parser is all we use
GROUPS: tuple[Callable[[Subparsers, argparse.ArgumentParser], None], ...] = (
    overview.add_login,
    overview.add_health,
    overview.add_stats,
    resources.add_projects,
    resources.add_keys,
    resources.add_jobs,
    resources.add_runs,
    resources.add_dlq,
    resources.add_events,
)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (a ClientError), not usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Context:
    """One invocation: its output, and the server connection, made on first use (login, health
    and a bad flag never need credentials)."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.environ = environ
        self.out = Output(args.output)
        self._profile: Profile | None = None

    @property
    def profile(self) -> Profile:
        if self._profile is None:
            flags = {"url": self.args.url, "api_key": self.args.api_key, "project": self.args.project}
            self._profile = resolve(flags, self.environ)
        return self._profile

    def api(self) -> Api:
        p = self.profile
        if not p.url:
            raise UsageError("no server: give --url, set STRAIT_BASE_URL, or run 'strait login'")
        if not p.api_key:
            raise UsageError("no credentials: give --api-key, set STRAIT_API_KEY, or run 'strait login'")
        return Api(p.url, p.api_key, p.project)

    def project(self) -> str:
        """The project a command must name itself (in a body): --project, STRAIT_PROJECT or login's."""
        if not self.profile.project:
            raise UsageError("no project: give --project, set STRAIT_PROJECT, or 'strait login --project'")
        return self.profile.project


def global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The connection options. Both the top-level parser and every verb take them, so they may
    stand before or after the command; the verbs' copies default to SUPPRESS so they do not
    overwrite a value given before the command."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--url", default=default(None), help="server URL (else STRAIT_BASE_URL, else login's)")
    parser.add_argument("--api-key", default=default(None), help="API key or internal secret (else STRAIT_API_KEY)")
    parser.add_argument("--project", default=default(None), help="project id (else STRAIT_PROJECT)")
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default=default("table"), help="json: the server's JSON as sent"
    )


def build() -> Parser:
    parser = Parser(
        prog="strait",
        description="strait's command-line client: talks to a strait server over its REST API.",
        epilog="The server itself: 'strait --mode all|api|worker' and 'strait migrate'.",
    )
    global_options(parser, defaults=True)
    common = Parser(add_help=False)
    global_options(common, defaults=False)
    groups = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for add in GROUPS:
        add(groups, common)
    return parser


def run(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    """Parse, dispatch, and turn any ClientError into one line on stderr and its exit code."""
    env = os.environ if environ is None else environ
    try:
        args = build().parse_args(list(argv))
        ctx = Context(args, env)
        handler: Callable[[Context, argparse.Namespace], int] = args.handler
        return handler(ctx, args)
    except ClientError as exc:
        print(f"strait: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("strait: interrupted", file=sys.stderr)
        return 130
