"""What a dispatch outcome means: error classes (engine.md §4.1) and retry delays (§4.4).

Outcomes are values with a retry decision; nothing here raises.
"""

from __future__ import annotations

import random

NOT_RETRYABLE = frozenset({"client", "auth", "budget", "oom"})
MAX_DELAY_SECS = 3600.0
JITTER = 0.2


def classify_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if 400 <= status < 500:
        return "client"
    if status >= 500:
        return "server"
    return "unknown"  # 3xx: redirects are not followed


def is_retryable(error_class: str) -> bool:
    return error_class not in NOT_RETRYABLE


def jitter(delay: float, rng: random.Random | None = None) -> float:
    r = rng or random
    return delay + r.uniform(-JITTER * delay, JITTER * delay)


def base_delay(strategy: str | None, attempt: int, delays: list[int] | None = None) -> float:
    """Delay before the next attempt, before jitter; `attempt` is the one that just failed (≥ 1)."""
    attempt = max(1, attempt)
    if strategy == "linear":
        return max(1.0, min(float(attempt), MAX_DELAY_SECS))
    if strategy == "fixed":
        return 1.0
    if strategy == "custom" and delays:
        return max(1.0, min(float(delays[min(attempt - 1, len(delays) - 1)]), MAX_DELAY_SECS))
    # exponential (default): 1 s doubling, capped at an hour
    return min(2.0 ** (attempt - 1), MAX_DELAY_SECS)


def retry_delay(
    strategy: str | None, attempt: int, delays: list[int] | None = None, rng: random.Random | None = None
) -> float:
    return jitter(base_delay(strategy, attempt, delays), rng)
