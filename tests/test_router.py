"""The router's shortcut (api/router.py) answers every path as aiohttp's own walk does: the same
route and match for each route and method, the same 404 and 405 (with the same allowed methods)
for paths and methods no route has, and the route aiohttp would try first where two could match."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from strait_actors.api.app import create_app
from strait_actors.api.router import Router, application
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
    "/v1/runs/r1/",
    "/v1/runs//",
    "/v1/jobs/j1/trigger",
    "/v1/jobs/j1/trigger/",
    "/v1/jobs/j1/trigger/bulk",
    "/v1/jobs/j1/trigger/bulk/x",
    "/v1/jobs//trigger",
    "/v1/jobs/j%2F1/trigger",
    "/v1/jobs/trigger",
    "/v1/jobs/",
    "/v1/jobs",
    "/v1",
    "/",
)


def _outcome(match: Any) -> tuple[Any, ...]:
    exc = match.http_exception
    if exc is not None:
        return ("error", exc.status, sorted(getattr(exc, "allowed_methods", ()) or ()))
    return ("route", match.route, dict(match))


def _same_as_aiohttp(app: web.Application, paths: list[str]) -> int:
    """Resolve each path with each method through the router and through aiohttp's own walk; they
    must agree. How many were compared."""
    router = app.router
    assert isinstance(router, Router)
    router.freeze()
    compared = 0

    async def go() -> None:
        nonlocal compared
        for path in paths:
            for method in METHODS:
                shortcut = await router.resolve(make_mocked_request(method, path, app=app))
                walked = await web.UrlDispatcher.resolve(router, make_mocked_request(method, path, app=app))
                assert _outcome(shortcut) == _outcome(walked), (method, path)
                compared += 1

    asyncio.run(go())
    return compared


def _shapes(app: web.Application) -> dict[str, Any]:
    """The router's shapes by their paths with the variable's segment emptied."""
    router = app.router
    assert isinstance(router, Router)
    return {key: shape for _, shapes in router._by_depth or () for key, shape in shapes.items()}


def test_every_route_resolves_as_aiohttp_would() -> None:
    app = create_app(load(environ={"INTERNAL_SECRET": SECRET, "JWT_SIGNING_KEY": JWT_KEY}), "postgresql:///unused")
    canonicals = [r.canonical for r in app.router.resources()]
    paths = [re.sub(r"\{\w+\}", "0b5c3c2e-0000-4000-8000-000000000001", c) for c in canonicals]
    paths += [re.sub(r"\{\w+\}", "k%20ey", c) for c in canonicals if "{" in c]
    assert len(canonicals) >= 60
    assert _same_as_aiohttp(app, [*paths, *ODD]) == len(METHODS) * (len(paths) + len(ODD))
    # the shortcut ran, and took the busy routes: a trigger, a run, the SDK plane's calls
    shapes = _shapes(app)
    for key in ["/v1/jobs//trigger", "/v1/jobs//trigger/bulk", "/v1/runs/", "/sdk/v1/runs//heartbeat"]:
        assert key in shapes, key


def test_a_route_tried_first_by_aiohttp_keeps_its_paths() -> None:
    """Routes that overlap a shape: a literal where it has its variable (added before or after it),
    a variable where it has a literal, a regular expression, a static prefix. Each path goes where
    aiohttp's walk sends it."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = application()
    r = app.router
    r.add_get("/a/{id}", handler)
    r.add_post("/a/{id}", handler)
    r.add_get("/a/search", handler)  # a literal, added after: reserves "search" only
    r.add_get("/b/{x}/t", handler)
    r.add_get("/b/{y}/{z}", handler)  # tried after /b/{x}/t, a shape of its own... two variables: walked
    r.add_get("/c/{x}/t", handler)
    r.add_get("/c/f/{y}", handler)  # a longer prefix: reserves "f" for /c/{x}/t
    r.add_get("/d/{v:.*}", handler)  # a regular expression before the shape: /d/{x}/t is left out
    r.add_get("/d/{x}/t", handler)
    r.add_static("/e/s", ".")  # a static prefix under /e: /e/{x} is left out
    r.add_get("/e/{x}", handler)
    r.add_get("/g/{x}", handler)
    r.add_get("/g/{y}", handler)  # the same shape twice: aiohttp's order
    paths = [
        *(f"/a/{v}" for v in ("1", "search", "searc", "", "search/", "x%20y")),
        *(f"/b/{v}/t" for v in ("1", "t", "")),
        "/b/1/u",
        *(f"/c/{v}/t" for v in ("1", "f", "ff")),
        "/c/f/u",
        *(f"/d/{v}/t" for v in ("1", "a/b")),
        "/d/1",
        *(f"/e/{v}" for v in ("1", "s")),
        "/e/s/x",
        "/g/1",
    ]
    assert _same_as_aiohttp(app, paths) == len(METHODS) * len(paths)
    shapes = _shapes(app)
    assert shapes["/a/"].reserved == {"search"}
    assert shapes["/c//t"].reserved == {"f"}
    assert "/d//t" not in shapes
    assert "/e/" not in shapes
    assert len(shapes["/g/"].resources) == 2
