"""aiohttp's router with one shortcut for the busiest path: the SDK plane's calls.

A run's code calls `/sdk/v1/runs/{run_id}/<call>` several times per run. aiohttp finds such a
path by walking up its segments to `/sdk/v1/runs` and trying the plane's resources there one
regular expression at a time, in the order they were added. Here the call's last segment names
the one resource to try. What that resource does not match (another method, a deeper path) goes
the usual way, so every answer, a 404 and a 405 included, is the one aiohttp would give.
"""

from __future__ import annotations

import warnings
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, UrlMappingMatchInfo

SDK_RUNS = "/sdk/v1/runs/"
_CALL = SDK_RUNS + "{run_id}/"


class Router(web.UrlDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[str, AbstractResource] | None = None  # built on the first SDK call

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        path = request.rel_url.path_safe
        if path.startswith(SDK_RUNS):
            calls = self._calls
            if calls is None:
                calls = self._calls = self._sdk_calls()
            resource = calls.get(path.rpartition("/")[2])
            if resource is not None:
                match, _ = await resource.resolve(request)
                if match is not None:
                    return match
        return await super().resolve(request)

    def _sdk_calls(self) -> dict[str, AbstractResource]:
        """`/sdk/v1/runs/{run_id}/<call>` resources by <call> (the first added, as aiohttp tries them)."""
        calls: dict[str, AbstractResource] = {}
        for resource in self.resources():
            canonical = resource.canonical
            if canonical.startswith(_CALL):
                tail = canonical[len(_CALL) :]
                if tail and "/" not in tail and "{" not in tail:
                    calls.setdefault(tail, resource)
        return calls


def application(**kwargs: Any) -> web.Application:
    """A web.Application on `Router` (aiohttp 3 marks its `router` argument deprecated; 3.x keeps
    it, and pyproject pins aiohttp below 4)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return web.Application(router=Router(), **kwargs)
