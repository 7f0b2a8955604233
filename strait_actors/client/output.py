"""What the CLI prints: the server's JSON untouched (`--output json`), or rich tables.

JSON mode writes the answer's text exactly as the server sent it, so a script parses what the API
returned, field for field. Table mode shows a list as one row per item with a few columns chosen
per resource, and one object as a two-column table of every field.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from strait_actors.client.http import Reply

GOOD = {"completed", "ready", "ok", "received", "approved"}
BAD = {"failed", "timed_out", "crashed", "system_failed", "dead_letter", "expired", "not_ready", "degraded"}
BUSY = {"executing", "dequeued", "running"}
PIPE_WIDTH = 250
CELL_MAX = 60  # a JSON value in a table cell is cut here; `get` or --output json shows it whole


@dataclass(frozen=True)
class Column:
    """A table column: its heading and the field it shows."""

    title: str
    field: str


def cols(*pairs: str) -> tuple[Column, ...]:
    """`cols("ID:id", "STATUS:status")`: columns from heading:field pairs."""
    return tuple(Column(*p.split(":", 1)) for p in pairs)


def status_text(value: str) -> Text:
    style = "green" if value in GOOD else "red" if value in BAD else "yellow" if value in BUSY else ""
    return Text(value, style=style)


def cell(field: str, value: Any) -> Text:
    """One value as table text: timestamps to the second, statuses coloured, JSON compact and cut."""
    if value is None:
        return Text("")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if field in ("status", "to") and isinstance(value, str):
        return status_text(value)
    if isinstance(value, str):
        if field.endswith("_at") and len(value) >= 19 and value[10] == "T":
            return Text(value[:10] + " " + value[11:19])
        return Text(value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return Text(text if len(text) <= CELL_MAX else text[: CELL_MAX - 1] + "…")


class Output:
    """Where results go: stdout (tables or JSON) and stderr (notes that are not the result)."""

    def __init__(self, mode: str) -> None:
        self.json = mode == "json"
        self.console = Console(soft_wrap=False, highlight=False)
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            # piped (grep, a file): rows whole on one line each, not folded at 80 columns
            self.console.width = PIPE_WIDTH
        self.err = Console(stderr=True, highlight=False)

    def raw(self, reply: Reply) -> None:
        """The server's JSON as it was sent (nothing for an empty answer)."""
        if reply.text:
            sys.stdout.write(reply.text.rstrip("\n") + "\n")
            sys.stdout.flush()

    def data(self, value: Any) -> None:
        """JSON the CLI composed itself (stats): compact, one document."""
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        self.err.print(escape(text))

    def line(self, text: str | Text) -> None:
        self.console.print(text if isinstance(text, Text) else Text(text))

    def listing(self, reply: Reply, columns: Sequence[Column], empty: str) -> None:
        """A page `{data, has_more, next_cursor}` (or a bare array) as a table."""
        if self.json:
            self.raw(reply)
            return
        body = reply.data
        rows = body.get("data", []) if isinstance(body, dict) else body or []
        if not rows:
            self.line(empty)
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
        for col in columns:
            table.add_column(col.title, overflow="fold" if col.field in ("id", "error") else "ellipsis")
        for row in rows:
            table.add_row(*(cell(c.field, row.get(c.field)) for c in columns))
        self.console.print(table)
        if isinstance(body, dict) and body.get("has_more") and body.get("next_cursor"):
            self.note(f"more: --cursor {body['next_cursor']}")

    def record(self, reply: Reply) -> None:
        """One object: every field on its own row."""
        if self.json:
            self.raw(reply)
            return
        self.fields(reply.data if isinstance(reply.data, dict) else {"value": reply.data})

    def fields(self, obj: dict[str, Any]) -> None:
        table = Table(show_header=False, show_edge=False, pad_edge=False, box=None)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for name, value in obj.items():
            shown = (
                Text(json.dumps(value, ensure_ascii=False, indent=2))
                if isinstance(value, dict | list) and value
                else cell(name, value)
            )
            table.add_row(name, shown)
        self.console.print(table)
