"""Run tokens (api.md §1.5): HS256 JWTs minted fresh for every dispatch attempt."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

import jwt
import orjson

ISSUER = "strait:run-token"
# the JOSE header never changes: encode it once (PyJWT re-validates the key on every call, which
# cost a tenth of a worker's CPU at a few thousand dispatches a second)
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@lru_cache(maxsize=8)
def _mac(key: str) -> Any:
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def mint_run_token(
    key: str,
    run_id: str,
    attempt: int,
    lease_id: str,
    *,
    expires_at: datetime | None,
    timeout_secs: int,
    now: float | None = None,
) -> str:
    """exp = max(run expiry, now + timeout + 60 s): a retry long after trigger still gets a live token."""
    t = int(now if now is not None else time.time())
    exp = t + timeout_secs + 60
    if expires_at is not None:
        exp = max(exp, int(expires_at.timestamp()))
    claims = {"iss": ISSUER, "sub": run_id, "attempt": attempt, "iat": t, "exp": exp, "lease_id": lease_id}
    signing_input = _HEADER + b"." + _b64(orjson.dumps(claims))
    mac = _mac(key).copy()
    mac.update(signing_input)
    return (signing_input + b"." + _b64(mac.digest())).decode()


def decode_run_token(key: str, token: str) -> dict[str, Any]:
    """Verified claims; raises jwt.InvalidTokenError for a bad signature, expiry or issuer."""
    return jwt.decode(token, key, algorithms=["HS256"], issuer=ISSUER, options={"require": ["exp", "iss"]})
