"""Job rate limits and named rate-limit keys counted in Redis (engine.md §2.5), when REDIS_URL is set.

Each limit is a sliding window: a sorted set of the runs admitted in it, scored by the time Redis
admitted them (Redis's own clock, so API processes with drifting clocks agree). One script checks
every limit a trigger touches and, only when all of them have room for all its runs, adds the
runs to each: a trigger is admitted whole or not at all, atomically across API processes. Runs
that were not created after all (an idempotency or dedup hit, a failed insert) are taken back.

The same windows are counted in PostgreSQL when REDIS_URL is not set (`store.enqueue`). When
Redis fails, `take` answers None and the caller counts in PostgreSQL instead: a limit is never
dropped for an outage (the two counts do not see each other's runs during it).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from strait_actors.store.errors import RateLimited

log = logging.getLogger(__name__)

# KEYS: one sorted set per limit. ARGV: n, then (max, window ms) per key, then the n run ids.
# Returns {0, 0} when admitted, else {index of the full limit (1-based), ms until it has room}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
for i = 1, #KEYS do
  local max = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - win)
  if redis.call('ZCARD', KEYS[i]) + n > max then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    local wait = win
    if oldest[2] then wait = tonumber(oldest[2]) + win - now end
    return {i, wait}
  end
end
local first = 2 * #KEYS + 2
for i = 1, #KEYS do
  local win = tonumber(ARGV[2 * i + 1])
  for j = first, #ARGV do
    redis.call('ZADD', KEYS[i], now, ARGV[j])
  end
  redis.call('PEXPIRE', KEYS[i], win)
end
return {0, 0}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    redis_key: str
    max: int
    window_secs: int
    name: str  # for the refusal's message


def limits_of(job: Mapping[str, Any]) -> list[Limit]:
    """The job's own rate limit and its named keys (each key's count is shared by the project)."""
    out: list[Limit] = []
    if job["rate_limit_max"]:
        window = job["rate_limit_window_secs"] or 60
        out.append(Limit(f"strait:rl:job:{job['id']}", job["rate_limit_max"], window, "job rate limit"))
    for entry in job.get("rate_limit_keys") or ():
        scope = json.dumps([job["project_id"], entry["key"]], separators=(",", ":"))
        name = f"rate limit key {json.dumps(entry['key'], ensure_ascii=False)}"
        out.append(Limit(f"strait:rl:key:{scope}", entry["max"], entry["window_secs"], name))
    return out


class RedisRateLimits:
    """Sliding-window admission of whole triggers, shared by every API process through Redis."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.script = redis.register_script(_SCRIPT)
        self.quiet_until = 0.0

    def _down(self, exc: Exception) -> None:
        if time.monotonic() >= self.quiet_until:  # one line per outage, not one per trigger
            self.quiet_until = time.monotonic() + 10
            log.warning("rate limits: redis unavailable (%s); counting in PostgreSQL", exc)

    async def take(self, limits: Sequence[Limit], run_ids: Sequence[uuid.UUID]) -> bool:
        """True: admitted and counted. False: Redis is unavailable (count elsewhere).
        Raises RateLimited when a limit has no room for all the runs."""
        try:
            full, wait_ms = await self.script(keys=[limit.redis_key for limit in limits], args=_args(limits, run_ids))
        except Exception as exc:
            self._down(exc)
            return False
        if int(full):
            limit = limits[int(full) - 1]
            raise RateLimited(max(1, math.ceil(int(wait_ms) / 1000)), f"{limit.name} exceeded")
        return True

    async def give_back(self, limits: Sequence[Limit], run_ids: Sequence[uuid.UUID]) -> None:
        """Runs admitted but not created leave every window they were counted in."""
        members = [str(r) for r in run_ids]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for limit in limits:
                    pipe.zrem(limit.redis_key, *members)
                await pipe.execute()
        except Exception as exc:
            self._down(exc)


def _args(limits: Sequence[Limit], run_ids: Sequence[Any]) -> list[Any]:
    args: list[Any] = [len(run_ids)]
    for limit in limits:
        args += [limit.max, limit.window_secs * 1000]
    return args + [str(r) for r in run_ids]


class SyncRedisRateLimits:
    """The same windows, from a thread of its own (the Scheduler's cron ticks): a tick's run is
    counted where the API's triggers count theirs, so each sees the other's."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.script = redis.register_script(_SCRIPT)
        self.quiet_until = 0.0

    def _down(self, exc: Exception) -> None:
        if time.monotonic() >= self.quiet_until:
            self.quiet_until = time.monotonic() + 10
            log.warning("rate limits: redis unavailable (%s); cron ticks are judged in PostgreSQL", exc)

    def take(self, limits: Sequence[Limit], run_ids: Sequence[Any]) -> bool | None:
        """True: admitted and counted; False: a limit has no room; None: Redis is unavailable."""
        try:
            full, _ = self.script(keys=[limit.redis_key for limit in limits], args=_args(limits, run_ids))
        except Exception as exc:
            self._down(exc)
            return None
        return not int(full)

    def give_back(self, limits: Sequence[Limit], run_ids: Sequence[Any]) -> None:
        members = [str(r) for r in run_ids]
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for limit in limits:
                    pipe.zrem(limit.redis_key, *members)
                pipe.execute()
        except Exception as exc:
            self._down(exc)

    def close(self) -> None:
        self.redis.close()
