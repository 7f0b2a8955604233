"""The SDK plane's shortcut in the router (api/router.py) answers every path as aiohttp's own walk
does: the same route and match for each SDK call and method, the same 404 and 405 (with the same
allowed methods) for paths and methods the plane does not have."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from strait_actors.api.app import create_app
from strait_actors.api.router import SDK_RUNS, Router
from strait_actors.settings import load
from tests.conftest import JWT_KEY, SECRET

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ODD = (
    "/sdk/v1/runs/r1/heartbeat/extra",
    "/sdk/v1/runs//heartbeat",
    "/sdk/v1/runs/heartbeat",
    "/sdk/v1/runs/a%2Fb/heartbeat",
    "/sdk/v1/runs/%7Bx%7D/complete",
    "/sdk/v1/runs/{x}/complete",
    "/sdk/v1/runs/r1/state/heartbeat",
    "/sdk/v1/runs/r1/state/",
    "/sdk/v1/runs/r1/unknown",
    "/sdk/v1/runs/r1/",
    "/sdk/v1/runs/",
    "/sdk/v1/runs/r%C3%A9/log",
    "/v1/runs/r1",
)


def _outcome(match: Any) -> tuple[Any, ...]:
    exc = match.http_exception
    if exc is not None:
        return ("error", exc.status, sorted(getattr(exc, "allowed_methods", ()) or ()))
    return ("route", match.route, dict(match))


def test_every_sdk_path_resolves_as_aiohttp_would() -> None:
    app = create_app(load(environ={"INTERNAL_SECRET": SECRET, "JWT_SIGNING_KEY": JWT_KEY}), "postgresql:///unused")
    router = app.router
    assert isinstance(router, Router)
    router.freeze()
    paths = [
        r.canonical.replace("{run_id}", "0b5c3c2e-0000-4000-8000-000000000001").replace("{key}", "k%20ey")
        for r in router.resources()
        if r.canonical.startswith(SDK_RUNS)
    ]
    assert len(paths) >= 15  # heartbeat, log, progress, complete, fail, … each a path of its own
    compared = 0

    async def go() -> None:
        nonlocal compared
        for path in [*paths, *ODD]:
            for method in METHODS:
                shortcut = await router.resolve(make_mocked_request(method, path, app=app))
                walked = await web.UrlDispatcher.resolve(router, make_mocked_request(method, path, app=app))
                assert _outcome(shortcut) == _outcome(walked), (method, path)
                compared += 1

    asyncio.run(go())
    assert {"heartbeat", "log", "progress", "complete", "fail"} <= set(router._calls or {})  # the shortcut ran
    assert compared == len(METHODS) * (len(paths) + len(ODD))
