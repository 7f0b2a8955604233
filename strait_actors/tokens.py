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


class InvalidRunToken(Exception):
    """A token that is not a run token of this server: bad form, signature, issuer or expiry."""


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_run_token(key: str, token: str, *, now: float | None = None) -> dict[str, Any]:
    """Verified claims of a run token. Our own tokens (the one header we mint) are checked here with
    one HMAC, a fifth of PyJWT's cost on the SDK plane's busiest calls; any other header goes
    through PyJWT, which admits HS256 only."""
    head, _, rest = token.partition(".")
    if head.encode(errors="surrogateescape") != _HEADER:
        try:
            return decode_run_token(key, token)
        except (jwt.InvalidTokenError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
            raise InvalidRunToken(str(exc)) from None
    body, dot, sig = rest.partition(".")
    if not dot:
        raise InvalidRunToken("malformed token")
    try:
        mac = _mac(key).copy()
        mac.update(f"{head}.{body}".encode())
        given = _unb64(sig)
        if not hmac.compare_digest(mac.digest(), given):
            raise InvalidRunToken("signature mismatch")
        claims = orjson.loads(_unb64(body))
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidRunToken("malformed token") from None
    if not isinstance(claims, dict) or claims.get("iss") != ISSUER:
        raise InvalidRunToken("wrong issuer")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= (time.time() if now is None else now):
        raise InvalidRunToken("expired or missing exp")
    return claims
