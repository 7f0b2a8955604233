"""Following one run to its end: `strait runs watch` and `strait jobs trigger --wait`.

The run stream (`GET /v1/runs/{id}/stream`, api.md §4.5) is read from the run's first event
(`Last-Event-ID: 0`), so a watch started late, or after the end, still tells the whole story and
always ends with the terminal status; a stream the server closes early (its connection time limit)
is resumed from the last frame's id. On a terminal the story is drawn live (status, attempt,
progress bar, the latest log lines); elsewhere it is one line per frame, and with `--output json`
each frame is printed as the server sent it (one JSON object per line).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from strait_actors import fsm
from strait_actors.client.http import Api, ClientError, ServerError, Unreachable, seg
from strait_actors.client.output import Output, cell, status_text

STREAM_READ_SECS = 45.0  # the server sends a keep-alive every 15 s by default: silence this long is a dead line
RECONNECTS = 5  # attempts in a row to get a lost stream back before giving up
RECONNECT_PAUSE_SECS = 1.0
QUIET_CHECK_SECS = 10.0  # keep-alives alone this long: read the run once (see `follow`)


class WaitTimeout(ClientError):
    """The run had not ended when --timeout ran out."""


class RunView:
    """What is known of the run so far, fed frame by frame; drawn as a panel or as lines."""

    def __init__(self, run: dict[str, Any]) -> None:
        self.run = run
        self.status = str(run.get("status", ""))
        self.attempt = run.get("attempt")
        self.percent: float | None = None
        self.progress_note = ""
        self.logs: deque[tuple[str, str, str]] = deque(maxlen=6)

    def feed(self, msg: dict[str, Any]) -> str:
        """Take one frame in; the line that tells it."""
        stamp = str(msg.get("timestamp", ""))[11:19]
        if msg.get("type") == "status_change":
            self.status = str(msg.get("to"))
            error = f": {msg['error']}" if msg.get("error") else ""
            return f"{stamp} {msg.get('from')} -> {self.status}{error}"
        raw = msg.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if msg.get("event_type") == "progress":
            percent = data.get("percent")
            self.percent = float(percent) if isinstance(percent, int | float) else self.percent
            self.progress_note = str(msg.get("message") or data.get("step") or "")
            return f"{stamp} progress {percent}% {self.progress_note}".rstrip()
        level, text = str(msg.get("level", "")), str(msg.get("message", ""))
        self.logs.append((stamp, level, text))
        return f"{stamp} {msg.get('event_type', 'log')} {level}: {text}"

    def render(self) -> RenderableType:
        head = Table.grid(padding=(0, 2))
        head.add_row(Text("run", style="bold"), Text(str(self.run.get("id"))))
        head.add_row(Text("job", style="bold"), Text(str(self.run.get("job_id"))))
        head.add_row(Text("status", style="bold"), status_text(self.status))
        if self.attempt is not None:
            head.add_row(Text("attempt", style="bold"), Text(str(self.attempt)))
        parts: list[RenderableType] = [head]
        if self.percent is not None:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=100, completed=self.percent, width=40), Text(f"{self.percent:g}%"))
            bar.add_row("", Text(self.progress_note, style="dim"))
            parts.append(bar)
        for stamp, level, text in self.logs:
            style = "red" if level == "error" else "yellow" if level == "warn" else "dim"
            parts.append(Text.assemble((f"{stamp} ", "dim"), (f"{level:5} ", style), text))
        return Group(*parts)


def follow(api: Api, run_id: str, on_frame: Callable[[dict[str, Any]], None], timeout: float | None) -> None:
    """Read the run's stream until its terminal status change (or a 410: it has nothing more to
    tell); raise WaitTimeout past `timeout` seconds.

    A stream that stays quiet (keep-alives only) for QUIET_CHECK_SECS is double-checked with one
    read of the run: a run that has ended meanwhile ends the wait even if its last frame never
    came (a transition that began before the stream's watch was registered and committed after
    the stream's first read is not told to the stream)."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    last_id = "0"
    failures = 0
    heard = time.monotonic()
    while True:
        left = STREAM_READ_SECS if deadline is None else deadline - time.monotonic()
        try:
            for frame_id, msg in api.stream(
                f"/v1/runs/{seg(run_id)}/stream", last_id, max(0.1, min(STREAM_READ_SECS, left))
            ):
                failures = 0
                if msg is not None:
                    heard = time.monotonic()
                    last_id = frame_id or last_id
                    on_frame(msg)
                    if msg.get("type") == "status_change" and fsm.is_terminal(str(msg.get("to"))):
                        return
                elif time.monotonic() - heard >= QUIET_CHECK_SECS:
                    heard = time.monotonic()
                    if fsm.is_terminal(str(api.call("GET", f"/v1/runs/{seg(run_id)}").data.get("status"))):
                        return
                _check(deadline, run_id)
        except ServerError as exc:
            if exc.status == 410:
                return
            raise
        except Unreachable:
            _check(deadline, run_id)
            failures += 1
            if failures >= RECONNECTS:
                raise
            time.sleep(RECONNECT_PAUSE_SECS)
        _check(deadline, run_id)


def _check(deadline: float | None, run_id: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout(f"run {run_id} had not ended when --timeout ran out")


def watch(api: Api, out: Output, run_id: str, timeout: float | None, quiet_json: bool = False) -> dict[str, Any]:
    """Follow the run and show it as it moves; its final state (read once more at the end: the
    stream does not carry the result)."""
    run = api.call("GET", f"/v1/runs/{seg(run_id)}").data
    view = RunView(run)
    if out.json:

        def emit(msg: dict[str, Any]) -> None:
            if not quiet_json:
                sys.stdout.write(json.dumps(msg, ensure_ascii=False) + "\n")
                sys.stdout.flush()

        follow(api, run_id, emit, timeout)
    elif out.console.is_terminal:
        with Live(view.render(), console=out.console, refresh_per_second=8) as panel:

            def redraw(msg: dict[str, Any]) -> None:
                view.feed(msg)
                if msg.get("to") == fsm.S.EXECUTING:  # a new attempt, maybe: frames do not carry it
                    view.attempt = api.call("GET", f"/v1/runs/{seg(run_id)}").data.get("attempt", view.attempt)
                panel.update(view.render())

            follow(api, run_id, redraw, timeout)
    else:
        follow(api, run_id, lambda m: out.line(view.feed(m)), timeout)
    final: dict[str, Any] = api.call("GET", f"/v1/runs/{seg(run_id)}").data
    return final


def summary(out: Output, run: dict[str, Any]) -> None:
    """The run's end in a line, then its result or error."""
    status = str(run.get("status"))
    line = Text.assemble("run ", str(run.get("id")), " ", status_text(status), f" (attempt {run.get('attempt')})")
    out.line(line)
    if run.get("error"):
        out.line(Text.assemble(("error: ", "bold red"), str(run["error"])))
    if "result" in run:
        out.line(Text.assemble(("result: ", "bold"), cell("result", run["result"])))


def outcome(run: dict[str, Any]) -> int:
    """The exit code a run's end deserves: 0 for completed, 1 for any other end."""
    return 0 if run.get("status") == fsm.S.COMPLETED else 1
