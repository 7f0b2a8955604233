"""API rate limits: per caller per minute, in memory or shared through a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from strait_actors.api.app import create_app
from strait_actors.api.limits import RateLimiter
from strait_actors.errors import ApiError
from strait_actors.settings import Settings
from strait_actors.store import projects as projects_store
from tests.conftest import SECRET, Endpoint, start_strait, stop_strait


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


def test_in_memory_limits_divide_over_api_processes(redis_url: str) -> None:
    """Each of N processes enforces its share, rounded up (0 stays off); through Redis, the whole."""
    limiter = RateLimiter(11, 0, None, 5, processes=2)
    assert limiter.limits == {"request": 6, "trigger": 0, "auth_failure": 3}
    assert RateLimiter(11, 0, None, 5, processes=1).limits == {"request": 11, "trigger": 0, "auth_failure": 5}

    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            shared = RateLimiter(11, 0, client, 5, processes=2)
            assert shared.limits == {"request": 11, "trigger": 0, "auth_failure": 5}
        finally:
            await client.aclose()

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


# ------------------------------------------------------------- credentials, routes, refused triggers


async def _in_process(settings: Settings, dsn: str) -> TestClient[web.Request, web.Application]:
    client = TestClient(TestServer(create_app(settings, dsn)))
    await client.start_server()
    return client


def test_unknown_credentials_are_limited_before_they_cost_a_lookup(
    dsn: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of made-up API keys from one address costs AUTH_FAILURE_LIMIT lookups, then 429s
    that touch nothing; a key verified before the flood keeps working from that address."""
    lookups: list[str] = []
    real = projects_store.api_key_by_hash

    async def counted(pool: Any, digest: str) -> Any:
        lookups.append(digest)
        return await real(pool, digest)

    monkeypatch.setattr(projects_store, "api_key_by_hash", counted)
    admin = {"Authorization": f"Bearer {SECRET}"}

    async def go() -> None:
        client = await _in_process(settings.replace(auth_failure_limit=5), dsn)
        try:
            made = await client.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}, headers=admin)
            assert made.status == 201
            made = await client.post(
                "/v1/api-keys", json={"project_id": "p", "name": "k", "scopes": ["*"]}, headers=admin
            )
            assert made.status == 201
            good = (await made.json())["key"]
            assert (await client.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"})).status == 200
            lookups.clear()
            answers = []
            for i in range(40):
                r = await client.get("/v1/jobs", headers={"Authorization": f"Bearer strait_madeup{i:04d}"})
                answers.append(r.status)
            assert answers[:5] == [401] * 5 and answers[5:] == [429] * 35, answers
            assert len(lookups) == 5, "a locked-out address must not cost a lookup per made-up key"
            refused = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {good}x"})
            assert refused.status == 429 and int(refused.headers["Retry-After"]) > 0
            assert (await refused.json())["error"]["code"] == "rate_limited"
            # a wrong internal secret is refused the same way; the right one (nothing to look up,
            # nothing to guess) and /health still answer from the locked-out address
            assert (await client.get("/v1/jobs", headers={"Authorization": "Bearer wrong-secret"})).status == 429
            assert (await client.get("/v1/jobs", headers={**admin, "X-Project-Id": "p"})).status == 200
            assert (await client.get("/health")).status == 200
            # the key verified before the flood is cached: it does not wait for the window
            assert (await client.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"})).status == 200
        finally:
            await client.close()

    asyncio.run(go())


def test_the_trigger_exemption_is_decided_by_route_not_by_path_text(dsn: str, settings: Settings) -> None:
    """Only the trigger routes count runs instead of requests: `%2Ftrigger` in an id is a request."""
    admin = {"Authorization": f"Bearer {SECRET}", "X-Project-Id": "p"}

    async def go() -> None:
        client = await _in_process(settings.replace(rate_limit_requests=3), dsn)
        try:
            answers = [(await client.get("/v1/runs/x%2Ftrigger", headers=admin)).status for _ in range(4)]
            answers += [(await client.get("/v1/runs/x%2Ftrigger%2Fbulk", headers=admin)).status]
            assert answers[:3] != [429] * 3 and answers[3:] == [429, 429], answers
        finally:
            await client.close()

    asyncio.run(go())


def test_dry_runs_and_refused_triggers_count_against_the_trigger_limit(
    dsn: str, settings: Settings, endpoint: Endpoint
) -> None:
    admin = {"Authorization": f"Bearer {SECRET}", "X-Project-Id": "p"}

    async def go() -> None:
        client = await _in_process(settings.replace(trigger_rate_limit_requests=6), dsn)
        try:
            made = await client.post("/v1/projects", json={"id": "p", "org_id": "o", "name": "Proj"}, headers=admin)
            assert made.status == 201
            made = await client.post(
                "/v1/jobs",
                json={
                    "project_id": "p",
                    "name": "J",
                    "slug": "j",
                    "endpoint_url": endpoint.url,
                    "payload_schema": {"type": "object", "required": ["n"]},
                },
                headers=admin,
            )
            assert made.status == 201
            job = (await made.json())["id"]
            url = f"/v1/jobs/{job}/trigger"
            assert (await client.post(url, json={"payload": {"n": 1}, "dry_run": True}, headers=admin)).status == 200
            assert (await client.post(url, json={"payload": {}}, headers=admin)).status == 400  # schema
            assert (await client.post(url, json={"delay": "x"}, headers=admin)).status == 400  # validation
            assert (await client.post(f"{url}/bulk", json={"items": 7}, headers=admin)).status == 400
            bulk = await client.post(f"{url}/bulk", json={"items": [{"payload": {"n": 1}}] * 2}, headers=admin)
            assert bulk.status == 201  # 4 + 2 = 6: at the limit
            refused = await client.post(url, json={"payload": {"n": 1}, "dry_run": True}, headers=admin)
            assert refused.status == 429 and (await refused.json())["error"]["code"] == "rate_limited"
        finally:
            await client.close()

    asyncio.run(go())
