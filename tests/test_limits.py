"""API rate limits: per caller per minute, in memory or shared through a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from strait_actors.api.limits import RateLimiter
from strait_actors.errors import ApiError
from tests.conftest import Endpoint, start_strait, stop_strait


def test_limits_are_shared_through_redis(redis_url: str) -> None:
    async def go() -> None:
        clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
        try:
            a, b = (RateLimiter(0, 10, c) for c in clients)
            await a.take("trigger", "caller-1", 6)
            await b.take("trigger", "caller-1", 4)  # 10: at the limit, allowed
            with pytest.raises(ApiError) as err:
                await a.take("trigger", "caller-1", 1)
            assert err.value.status == 429 and err.value.code == "rate_limited"
            assert "Retry-After" in err.value.headers
            await b.take("trigger", "caller-2", 10)  # another caller has its own budget
            await b.take("request", "caller-1", 10**6)  # 0 = that limit is off
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(go())


def test_in_memory_limit_counts_requests() -> None:
    async def go() -> None:
        limiter = RateLimiter(3, 0)
        for _ in range(3):
            await limiter.take("request", "x")
        with pytest.raises(ApiError):
            await limiter.take("request", "x")

    asyncio.run(go())


def test_trigger_limit_counts_bulk_items_over_http(
    dsn: str, redis_url: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    server = start_strait(
        {"DATABASE_URL": dsn, "REDIS_URL": redis_url, "TRIGGER_RATE_LIMIT_REQUESTS": "5"}, tmp_path, processes=1
    )
    try:
        with server.client("p") as c:
            c.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}).raise_for_status()
            job = c.post(
                "/v1/jobs", json={"project_id": "p", "name": "J", "slug": "j", "endpoint_url": endpoint.url}
            ).json()["id"]
            bulk = c.post(f"/v1/jobs/{job}/trigger/bulk", json={"items": [{"payload": {}}] * 4})
            assert bulk.status_code == 201
            assert c.post(f"/v1/jobs/{job}/trigger", json={}).status_code == 201
            refused = c.post(f"/v1/jobs/{job}/trigger", json={})
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) > 0
            assert len(c.get("/v1/runs").json()["data"]) == 5, "the refused trigger wrote nothing"
    finally:
        stop_strait(server)
