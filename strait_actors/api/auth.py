"""Who is calling (api.md §1): API keys, the internal secret, project context, scopes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from strait_actors.api.http import header_text
from strait_actors.api.limits import client_address
from strait_actors.api.state import CALLER, KEYS, LIMITER, POOL, SETTINGS
from strait_actors.errors import ApiError, forbidden, unauthorized
from strait_actors.ids import hash_key
from strait_actors.internal_secret import bearer_token, same_secret, shown
from strait_actors.store import projects as store
from strait_actors.store.coherence import Cache, ConfigFeed

__all__ = ["CALLER", "Caller", "KeyCache", "authenticate"]

KEY_CACHE_SECS = 5.0
KEY_CACHE_SIZE = 10000


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated identity of one request."""

    kind: str  # "internal" | "apikey"
    project_id: str | None  # the project context, if any
    scopes: frozenset[str]  # empty = every scope
    actor: str  # "" when unknown
    key_id: str | None = None

    def allows(self, scope: str) -> bool:
        if not self.scopes or "*" in self.scopes or scope in self.scopes:
            return True
        family = scope.split(":", 1)[0]
        return f"{family}:*" in self.scopes

    @property
    def internal(self) -> bool:
        return self.kind == "internal"


class KeyCache:
    """API keys by their hash, kept until they change (`coherence`), else for KEY_CACHE_SECS: a
    trigger storm does not cost a lookup per request. Unknown keys are kept too (None), so a flood
    of made-up keys costs one lookup each and evicts only the least recently used."""

    def __init__(self, feed: ConfigFeed | None = None) -> None:
        self.rows: Cache[str, dict[str, Any] | None] = Cache(feed, "api_keys", KEY_CACHE_SECS, str, KEY_CACHE_SIZE)

    def cached(self, key: str) -> tuple[bool, dict[str, Any] | None]:
        """(True, row or None) when the key's copy is still good."""
        return self.rows.peek(hash_key(key))

    async def fetch(self, pool: AsyncConnectionPool, key: str) -> dict[str, Any] | None:
        """Look the key up (after `cached` missed) and remember the answer, found or not."""
        digest = hash_key(key)
        return await self.rows.load(digest, lambda: store.api_key_by_hash(pool, digest))

    def forget(self) -> None:
        self.rows.clear()


def caller(request: web.Request) -> Caller:
    found: Caller = request[CALLER]
    return found


def require(request: web.Request, scope: str) -> Caller:
    who = caller(request)
    if not who.allows(scope):
        raise forbidden(f"insufficient permissions: requires {scope}")
    return who


def project_scope(request: web.Request, message: str = "project_id is required") -> str:
    """The project a list is about: the key's project, or X-Project-Id/project_id for the secret."""
    who = caller(request)
    if who.project_id:
        return who.project_id
    raise ApiError(400, message)


def check_project(request: web.Request, project_id: str, what: str) -> None:
    """A resource of another project is not found (404), as in Go."""
    pid = caller(request).project_id
    if pid is not None and pid != project_id:
        raise ApiError(404, f"{what} not found")


async def _api_key_caller(request: web.Request, token: str) -> Caller:
    keys = request.app[KEYS]
    found, row = keys.cached(token)
    if not found:  # a lookup costs the database: not for an address that keeps failing
        request.app[LIMITER].check_locked(client_address(request))
        row = await keys.fetch(request.app[POOL], token)
    if row is None:
        raise unauthorized("invalid api key")
    if row["revoked_at"] is not None:
        raise unauthorized("api key has been revoked")
    if row["expires_at"] is not None and row["expires_at"] <= datetime.now(UTC):
        raise unauthorized("api key has expired")
    kid = str(row["id"])
    return Caller("apikey", row["project_id"], frozenset(row["scopes"]), f"apikey:{kid}", kid)


def _internal_caller(request: web.Request, token: str) -> Caller:
    secret = request.app[SETTINGS].internal_secret
    if not token or not same_secret(token, secret):
        # the right secret costs nothing to verify and cannot be guessed (>= 16 characters): it
        # passes even from a locked-out address (one shared with a flood, behind a proxy)
        request.app[LIMITER].check_locked(client_address(request))
        raise unauthorized("invalid or missing internal secret")
    project = (header_text(request, "X-Project-Id") or "").strip() or request.query.get("project_id") or None
    return Caller("internal", project, frozenset(), (header_text(request, "X-Actor-Id") or "").strip())


async def authenticate(request: web.Request) -> Caller:
    """The caller, or 401; an address with too many failures this minute gets 429 for any
    credential not already verified (limits.py), before its credential costs anything."""
    try:
        return await _authenticate(request)
    except ApiError as err:
        if err.status == 401:
            await request.app[LIMITER].note_failure(client_address(request))
        raise


async def _authenticate(request: web.Request) -> Caller:
    token = bearer_token(request)
    if token.startswith("strait_"):
        return await _api_key_caller(request, token)
    secret = request.headers.get("X-Internal-Secret")
    return _internal_caller(request, secret if secret is not None else token)


def internal_secret_ok(request: web.Request) -> bool:
    """For detailed health: the secret in X-Internal-Secret or as a bearer token."""
    return shown(request, request.app[SETTINGS].internal_secret)
