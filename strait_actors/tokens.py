"""Run tokens (api.md §1.5): HS256 JWTs minted fresh for every dispatch attempt."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import jwt

ISSUER = "strait:run-token"


def mint_run_token(key: str, run_id: str, attempt: int, lease_id: str, *,
                   expires_at: datetime | None, timeout_secs: int, now: float | None = None) -> str:
    """exp = max(run expiry, now + timeout + 60 s): a retry long after trigger still gets a live token."""
    t = int(now if now is not None else time.time())
    exp = t + timeout_secs + 60
    if expires_at is not None:
        exp = max(exp, int(expires_at.timestamp()))
    claims = {"iss": ISSUER, "sub": run_id, "attempt": attempt, "iat": t, "exp": exp, "lease_id": lease_id}
    return jwt.encode(claims, key, algorithm="HS256")


def decode_run_token(key: str, token: str) -> dict[str, Any]:
    """Verified claims; raises jwt.InvalidTokenError for a bad signature, expiry or issuer."""
    return jwt.decode(token, key, algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp", "iss"]})
