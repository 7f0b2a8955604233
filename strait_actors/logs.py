"""Process logs: one JSON object a line for machines, a readable line for people (LOG_FORMAT).

A container's or a file's stderr gets JSON lines (timestamp, level, logger, message, pid, and the
run context a line is about: `run_id`, `job_id`, `attempt`, `request_id`), so a log pipeline can
filter one run's story without parsing prose; a terminal gets the classic line. The run context
travels with `extra=run_fields(...)` on the lines that are written anyway: nothing is added per run.

No secret is ever meant to reach a log line; as a second guard every line is scrubbed of the
process's own secrets and of anything shaped like an API key or a run token before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

# the only `extra=` fields a line carries out: a field passed by mistake is not emitted
CONTEXT_FIELDS = ("run_id", "job_id", "attempt", "request_id")
REDACTED = "[redacted]"
# API keys (`strait_` + 64 hex, api.md §0.3) and JWTs (run tokens): whoever logged one, it goes
_SHAPES = re.compile(r"strait_[0-9a-fA-F]{64}|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_fields(run_id: object = None, job_id: object = None, attempt: int | None = None) -> dict[str, Any]:
    """`extra=` for a line about one run: only the fields that are known."""
    fields = {"run_id": run_id, "job_id": job_id, "attempt": attempt}
    return {k: str(v) if k != "attempt" else v for k, v in fields.items() if v is not None}


class Scrubber:
    """Removes known secret values and secret-shaped strings from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # longest first: a secret that contains another is replaced whole
        known = {s for s in (*self.secrets, *secrets) if s}
        self.secrets = tuple(sorted(known, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _SHAPES.sub(REDACTED, text) if ("strait_" in text or "eyJ" in text) else text


SCRUB = Scrubber()


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object a line; a traceback is one field of it, never lines of its own."""

    def __init__(self, scrub: Scrubber = SCRUB) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "timestamp": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.scrub(record.getMessage()),
            "pid": record.process,
        }
        out.update(_context(record))
        if record.exc_info:
            out["exception"] = self.scrub(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = self.scrub(self.formatStack(record.stack_info))
        # ASCII only: a lone surrogate in a message (a fuzzer's header, say) cannot break the stream
        return json.dumps(out, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """The readable line, with the run context appended in brackets when a line has one."""

    def __init__(self, scrub: Scrubber = SCRUB) -> None:
        super().__init__(TEXT_FORMAT)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = _context(record)
        if ctx:
            first, nl, rest = line.partition("\n")
            line = first + " [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]" + nl + rest
        return self.scrub(line)


def resolve_format(name: str, stream: Any = None) -> str:
    """`auto` becomes json or text by whether the stream (stderr) is a terminal."""
    name = name.lower()
    if name != "auto":
        return name
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):
        tty = False
    return "text" if tty else "json"


def configure(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """The root logger writes to stderr in `fmt` (json|text|auto) at `level`; uncaught exceptions
    and warnings become log lines of the same format."""
    SCRUB.add(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("strait").critical("uncaught exception", exc_info=(kind, value, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    try:
        logging.getLogger("strait").error(
            "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
        )
    except Exception:  # logging itself is broken: the interpreter's own report
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
