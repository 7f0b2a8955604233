"""API rate limits: per caller per minute, fixed windows.

Counted in Redis when REDIS_URL is set (every API process shares the count), else in memory per
API process: with API_PROCESSES = N each of the program's N processes enforces its share of every
limit (limit / N, rounded up), since the kernel spreads connections over them (SO_REUSEPORT).
Triggered runs are counted against TRIGGER_RATE_LIMIT_REQUESTS (a bulk trigger counts its items;
dry runs and refused triggers count too: each costs the API its validation); every other request
against RATE_LIMIT_REQUESTS. Which routes count runs is decided by the matched route
(`counts_runs`), never by the text of the path.

Credentials are limited before they cost a lookup: a client address with more than
AUTH_FAILURE_LIMIT failed authentications in the current minute is answered 429 for any
credential that is not already verified (a cached API key), without touching the database.
0 disables a limit. Redis trouble fails open: a limiter must not take the API down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from strait_actors.api.state import CALLER, LIMITER
from strait_actors.errors import ApiError

log = logging.getLogger(__name__)

WINDOW_SECS = 60
MAX_COUNTERS = 100_000  # in-memory counters per window; beyond, the oldest are dropped

_RUN_COUNTED: set[Callable[..., Any]] = set()
H = TypeVar("H", bound=Callable[..., Any])


def counts_runs(handler: H) -> H:
    """Mark a route handler whose requests count the runs they trigger, not themselves."""
    _RUN_COUNTED.add(handler)
    return handler


def _refused(limit: int, now: float) -> ApiError:
    retry = WINDOW_SECS - int(now) % WINDOW_SECS
    return ApiError(
        429,
        "rate limit exceeded",
        code="rate_limited",
        headers={"Retry-After": str(retry), "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"},
    )


class RateLimiter:
    """Counts per (kind, caller) in the current minute."""

    def __init__(
        self,
        requests_per_min: int,
        triggers_per_min: int,
        redis: Any = None,
        auth_failures_per_min: int = 0,
        processes: int = 1,
    ) -> None:
        self.limits = {"request": requests_per_min, "trigger": triggers_per_min, "auth_failure": auth_failures_per_min}
        if redis is None and processes > 1:  # in memory: this process's share (limits divide)
            self.limits = {kind: -(-limit // processes) for kind, limit in self.limits.items()}
        self.redis = redis
        self.window = 0
        self.counts: dict[tuple[str, str], int] = {}
        self.locked: dict[str, float] = {}  # client address -> locked out until (epoch seconds)
        self.quiet_until = 0.0  # no new warning about Redis before this (monotonic)

    async def take(self, kind: str, who: str, n: int = 1) -> None:
        limit = self.limits[kind]
        if limit <= 0 or n <= 0:
            return
        now = time.time()
        used = await self._count(kind, who, n, int(now) // WINDOW_SECS)
        if used > limit:
            raise _refused(limit, now)

    def check_locked(self, who: str) -> None:
        """429 if `who` (a client address) failed to authenticate too often this window.

        A local lookup only, never a round trip: each process learns a lock from the shared count
        when it counts a failure itself (`note_failure`)."""
        until = self.locked.get(who)
        if until is not None:
            now = time.time()
            if until > now:
                raise _refused(self.limits["auth_failure"], now)
            del self.locked[who]

    async def note_failure(self, who: str) -> None:
        """Count one failed authentication of `who`; at the limit, lock it out until the window ends."""
        limit = self.limits["auth_failure"]
        if limit <= 0:
            return
        now = time.time()
        window = int(now) // WINDOW_SECS
        if await self._count("auth_failure", who, 1, window) >= limit:
            if len(self.locked) >= MAX_COUNTERS:
                self.locked = {k: t for k, t in self.locked.items() if t > now}
                while len(self.locked) >= MAX_COUNTERS:
                    del self.locked[next(iter(self.locked))]
            self.locked[who] = (window + 1) * WINDOW_SECS

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
                if time.monotonic() >= self.quiet_until:  # one line per outage, not one per request
                    self.quiet_until = time.monotonic() + 10
                    log.warning("rate limiter: redis unavailable (%s); not limiting", exc)
                return 0
        if window != self.window:
            self.window, self.counts = window, {}
        used = self.counts.get((kind, who), 0) + n
        self.counts[(kind, who)] = used
        if len(self.counts) > MAX_COUNTERS:
            del self.counts[next(iter(self.counts))]
        return used


def client_address(request: web.Request) -> str:
    return f"ip:{request.remote}"


def caller_key(request: web.Request) -> str:
    who = request.get(CALLER)
    if who is None:
        return client_address(request)
    return who.key_id or f"internal:{who.actor}:{request.remote}"


async def take_triggers(request: web.Request, n: int) -> None:
    await request.app[LIMITER].take("trigger", caller_key(request), n)


async def take_request(request: web.Request) -> None:
    """Every /v1 request but the routes marked `counts_runs` (those count their runs instead)."""
    if request.match_info.handler not in _RUN_COUNTED:
        await request.app[LIMITER].take("request", caller_key(request))
