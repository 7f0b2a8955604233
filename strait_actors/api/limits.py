"""API rate limits: per caller per minute, fixed windows.

Counted in memory per API process, or in Redis when REDIS_URL is set (then every API
process shares the count). Triggered runs are counted (a bulk trigger counts its items)
against TRIGGER_RATE_LIMIT_REQUESTS; every other request against RATE_LIMIT_REQUESTS;
0 disables a limit. Redis trouble fails open: a limiter must not take the API down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from strait_actors.api.auth import CALLER, Caller
from strait_actors.api.state import LIMITER
from strait_actors.errors import ApiError

log = logging.getLogger(__name__)

WINDOW_SECS = 60


class RateLimiter:
    """Counts per (kind, caller) in the current minute."""

    def __init__(self, requests_per_min: int, triggers_per_min: int, redis: Any = None) -> None:
        self.limits = {"request": requests_per_min, "trigger": triggers_per_min}
        self.redis = redis
        self.window = 0
        self.counts: dict[tuple[str, str], int] = {}

    async def take(self, kind: str, who: str, n: int = 1) -> None:
        limit = self.limits[kind]
        if limit <= 0:
            return
        now = time.time()
        window = int(now) // WINDOW_SECS
        used = await self._count(kind, who, n, window)
        if used > limit:
            retry = WINDOW_SECS - int(now) % WINDOW_SECS
            raise ApiError(
                429,
                "rate limit exceeded",
                code="rate_limited",
                headers={"Retry-After": str(retry), "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"},
            )

    async def _count(self, kind: str, who: str, n: int, window: int) -> int:
        if self.redis is not None:
            key = f"rl:{kind}:{who}:{window}"
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.incrby(key, n)
                    pipe.expire(key, WINDOW_SECS * 2)
                    used, _ = await pipe.execute()
                return int(used)
            except Exception as exc:
                log.warning("rate limiter: redis unavailable (%s); not limiting", exc)
                return 0
        if window != self.window:
            self.window, self.counts = window, {}
        used = self.counts.get((kind, who), 0) + n
        self.counts[(kind, who)] = used
        return used


def caller_key(request: web.Request) -> str:
    who: Caller | None = request.get(CALLER)
    if who is None:
        return f"ip:{request.remote}"
    return who.key_id or f"internal:{who.actor}:{request.remote}"


async def take_triggers(request: web.Request, n: int) -> None:
    await request.app[LIMITER].take("trigger", caller_key(request), n)


async def take_request(request: web.Request) -> None:
    """Every /v1 request but the trigger routes (those count their runs instead)."""
    if not request.path.endswith(("/trigger", "/trigger/bulk")):
        await request.app[LIMITER].take("request", caller_key(request))
