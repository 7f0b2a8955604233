"""API rate limits: per caller per minute, fixed windows, in memory per API process.

Triggered runs are counted (a bulk trigger counts its items) against
TRIGGER_RATE_LIMIT_REQUESTS; every other request against RATE_LIMIT_REQUESTS; 0 disables.
"""

from __future__ import annotations

import time

from aiohttp import web

from strait_actors.api.auth import CALLER, Caller
from strait_actors.api.http import Handler
from strait_actors.api.state import LIMITER
from strait_actors.errors import ApiError

WINDOW_SECS = 60


class RateLimiter:
    """Counts per (kind, caller) in the current minute."""

    def __init__(self, requests_per_min: int, triggers_per_min: int) -> None:
        self.limits = {"request": requests_per_min, "trigger": triggers_per_min}
        self.window = 0
        self.counts: dict[tuple[str, str], int] = {}

    def take(self, kind: str, who: str, n: int = 1) -> None:
        limit = self.limits[kind]
        if limit <= 0:
            return
        window = int(time.time()) // WINDOW_SECS
        if window != self.window:
            self.window, self.counts = window, {}
        used = self.counts.get((kind, who), 0) + n
        if used > limit:
            retry = WINDOW_SECS - int(time.time()) % WINDOW_SECS
            raise ApiError(429, "rate limit exceeded", code="rate_limited",
                           headers={"Retry-After": str(retry), "X-RateLimit-Limit": str(limit),
                                    "X-RateLimit-Remaining": "0"})
        self.counts[(kind, who)] = used


def caller_key(request: web.Request) -> str:
    who: Caller | None = request.get(CALLER)
    if who is None:
        return f"ip:{request.remote}"
    return who.key_id or f"internal:{who.actor}:{request.remote}"


def take_triggers(request: web.Request, n: int) -> None:
    request.app[LIMITER].take("trigger", caller_key(request), n)


@web.middleware
async def limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/") and not request.path.endswith(("/trigger", "/trigger/bulk")):
        request.app[LIMITER].take("request", caller_key(request))
    return await handler(request)
