"""Typed application state (aiohttp AppKeys) shared by handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from strait_actors.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from strait_actors.api.auth import Caller, KeyCache
    from strait_actors.api.deadlines import Deadlines
    from strait_actors.api.limits import RateLimiter
    from strait_actors.api.sdk import TokenCache
    from strait_actors.api.streams import StreamHub
    from strait_actors.store.budgets import Budgets
    from strait_actors.store.coherence import ConfigFeed
    from strait_actors.store.enqueue import Enqueuer
    from strait_actors.store.events import Sender
    from strait_actors.store.jobs import JobCache
    from strait_actors.store.sdk import SdkStore, Token

SETTINGS = web.AppKey("settings", Settings)
DSN = web.AppKey("dsn", str)
POOL = web.AppKey("pool", AsyncConnectionPool)
KEYS: web.AppKey[KeyCache] = web.AppKey("keys")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
ENQUEUER: web.AppKey[Enqueuer] = web.AppKey("enqueuer")
JOBS: web.AppKey[JobCache] = web.AppKey("jobs")
SDK: web.AppKey[SdkStore] = web.AppKey("sdk")
BUDGETS: web.AppKey[Budgets] = web.AppKey("budgets")
FEED: web.AppKey[ConfigFeed] = web.AppKey("feed")  # keeps KEYS, JOBS and BUDGETS coherent
HUB: web.AppKey[StreamHub] = web.AppKey("hub")
SENDER: web.AppKey[Sender] = web.AppKey("sender")
STARTED = web.AppKey("started", float)
# this process counts the queue's depth for /metrics: the program's first API process only (the
# gauge is `mostrecent` across the processes of one program, so one count serves them all)
COUNTS_DEPTH = web.AppKey("counts_depth", bool)
RUN_TOKENS: web.AppKey[TokenCache] = web.AppKey("run_tokens")  # verified run tokens of the SDK plane
DEADLINES: web.AppKey[Deadlines] = web.AppKey("deadlines")  # REQUEST_TIMEOUT of /v1 and the SDK plane
REDIS: web.AppKey[Redis | None] = web.AppKey("redis")  # None: no REDIS_URL

CALLER: web.RequestKey[Caller] = web.RequestKey("caller")  # who is calling (auth.py)
REQUEST_ID = web.RequestKey("request_id", str)
TOKEN: web.RequestKey[Token] = web.RequestKey("run_token")  # the SDK plane's verified run token (sdk.py)
