"""The internal secret (INTERNAL_SECRET) a request shows: in X-Internal-Secret, else as a bearer
token. It opens `/metrics` (the API's and a worker host's small port) and the API's detailed health.
Nothing of the API is imported here: a worker host's small port checks it without loading the API."""

from __future__ import annotations

import hmac

from aiohttp import web


def same_secret(given: str, secret: str) -> bool:
    """Constant-time comparison of a header value (any bytes, decoded with surrogateescape)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def bearer_token(request: web.Request) -> str:
    """The token of an `Authorization: Bearer <token>` header (any case of the scheme), else ''."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def shown(request: web.Request, secret: str) -> bool:
    """Whether the request shows `secret`: X-Internal-Secret when present (even empty), else a bearer token."""
    given = request.headers.get("X-Internal-Secret")
    if given is None:
        given = bearer_token(request)
    return bool(given) and same_secret(given, secret)
