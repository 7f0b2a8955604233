"""Cursor pagination (api.md §2.2): opaque `<rfc3339>|<id>` cursors, a bare timestamp accepted."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from strait_actors.api.render import ts
from strait_actors.errors import bad_request

DEFAULT_LIMIT = 50
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    after_ts: datetime | None
    after_id: Any | None


def _parse_ts(text: str) -> datetime:
    value = text.strip().replace(" ", "+")  # a '+' in a query string arrives as a space
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def page_of(request: web.Request, id_kind: str = "uuid") -> Page:
    raw_limit = request.query.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise bad_request("limit must be a positive integer") from None
        if limit <= 0:
            raise bad_request("limit must be a positive integer")
        limit = min(limit, MAX_LIMIT)
    cursor = request.query.get("cursor")
    if not cursor:
        return Page(limit, None, None)
    stamp, _, ident = cursor.partition("|")
    try:
        after_ts = _parse_ts(stamp)
        after_id: Any = None
        if ident:
            after_id = uuid.UUID(ident) if id_kind == "uuid" else int(ident) if id_kind == "int" else ident
            if id_kind == "int" and not 0 <= after_id < 2**63:
                raise ValueError(ident)
    except ValueError:
        raise bad_request("invalid cursor format") from None
    return Page(limit, after_ts, after_id)


def respond(
    rows: list[dict[str, Any]], page: Page, render: Callable[[dict[str, Any]], dict[str, Any]], key: str = "created_at"
) -> dict[str, Any]:
    """Rows were fetched with limit + 1: trim, and point the cursor at the last kept row."""
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    body: dict[str, Any] = {"data": [render(r) for r in rows], "has_more": has_more}
    if has_more:
        last = rows[-1]
        body["next_cursor"] = f"{ts(last[key])}|{last['id']}"
    return body
