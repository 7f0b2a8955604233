"""aiohttp's router with a shortcut for the routes of one shape: a literal prefix, one variable
segment, a literal tail (`/v1/jobs/{job_id}/trigger`, `/v1/runs/{run_id}`,
`/sdk/v1/runs/{run_id}/heartbeat`).

aiohttp finds such a path by walking up its segments to the prefix and trying the resources
indexed there one regular expression (and one coroutine) at a time, in the order they were added:
a trigger's route is the tenth of eleven under `/v1/jobs` (12.9 us of the API's CPU a trigger), a
run's the first of sixteen under `/v1/runs`. Here the path's prefix and tail name the resources of
its shape at once, and only those are tried (3.4 us). The shortcut answers only where aiohttp's own
walk would reach those resources first:

- a shape is left out when a resource tried before its own could match one of its paths whatever
  the variable's value: an earlier one of its prefix or one indexed under a longer prefix, with a
  variable where the shape has a literal, a variable of its own regular expression, a static or
  sub-application prefix;
- a resource with a literal where the shape has its variable (`/v1/runs/search` beside
  `/v1/runs/{run_id}`) reserves that value only: a path with it goes the usual way.

What the shape's resources do not match (another method, an empty segment) goes the usual way
too, so every answer, a 404 and a 405 included, is the one aiohttp would give.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import (
    AbstractResource,
    DynamicResource,
    MatchedSubAppResource,
    PlainResource,
    UrlMappingMatchInfo,
)

_VAR = re.compile(r"\{[_a-zA-Z][_a-zA-Z0-9]*\}")  # a whole segment, matched by aiohttp as [^{}/]+
_LITERAL = re.compile(r"[A-Za-z0-9._~-]*")  # characters a path carries as they are written

Segments = list[str | None]  # a route's segments after the leading "/": None for a variable


def _segments(resource: AbstractResource) -> Segments | None:
    """Each segment a literal or a plain variable; None for a route of any other kind (a variable's
    own regular expression shows in its pattern only: the canonical path reads `{name}` for both)."""
    if not isinstance(resource, PlainResource | DynamicResource):
        return None
    out: Segments = []
    pattern = []
    for part in resource.canonical.split("/")[1:]:
        if _VAR.fullmatch(part):
            out.append(None)
            pattern.append(f"(?P<{part[1:-1]}>{DynamicResource.GOOD})")
        elif _LITERAL.fullmatch(part):
            out.append(part)
            pattern.append(re.escape(part))
        else:
            return None
    if isinstance(resource, DynamicResource) and resource.get_info()["pattern"].pattern != "/" + "/".join(pattern):
        return None
    return out


@dataclass
class _Shape:
    depth: int  # literal segments before the variable
    template: Segments
    resources: list[AbstractResource] = field(default_factory=list)
    reserved: set[str] = field(default_factory=set)


class Router(web.UrlDispatcher):
    def __init__(self) -> None:
        super().__init__()
        self._by_depth: list[tuple[int, dict[str, _Shape]]] | None = None  # on the first request: routes are frozen

    async def resolve(self, request: web.Request) -> UrlMappingMatchInfo:
        by_depth = self._by_depth
        if by_depth is None:
            by_depth = self._by_depth = self._index()
        parts = request.rel_url.path_safe.split("/")
        for depth, shapes in by_depth:
            if len(parts) <= depth + 1:
                continue
            value, parts[depth + 1] = parts[depth + 1], ""
            shape = shapes.get("/".join(parts))  # the path with its variable's segment emptied
            parts[depth + 1] = value
            if shape is None or value in shape.reserved:
                continue
            for resource in shape.resources:
                match, _ = await resource.resolve(request)
                if match is not None:
                    return match
            break
        return await super().resolve(request)

    def _index(self) -> list[tuple[int, dict[str, _Shape]]]:
        """The shapes by the depth of their variable (deepest first), each by its path with the
        variable's segment emptied (`/v1/jobs//trigger`)."""
        resources = list(self.resources())
        if any(isinstance(r, MatchedSubAppResource) for r in resources):  # matched by rules, not paths
            return []
        # each route read once: its segments (None: not of our kind) and aiohttp's index key
        routes = [(r, _segments(r), self._get_resource_index_key(r)) for r in resources]
        shapes: dict[tuple[int, str], _Shape] = {}
        for resource, segments, _ in routes:
            variables = [i for i, s in enumerate(segments or ()) if s is None]
            if segments is None or len(variables) != 1 or variables[0] == 0:
                continue
            depth = variables[0]
            key = (depth, "/" + "/".join(s or "" for s in segments))
            shapes.setdefault(key, _Shape(depth, segments)).resources.append(resource)
        by_depth: dict[int, dict[str, _Shape]] = {}
        for (depth, emptied), shape in shapes.items():
            if _reserve(shape, routes):
                by_depth.setdefault(depth, {})[emptied] = shape
        return sorted(by_depth.items(), reverse=True)


def _reserve(shape: _Shape, routes: list[tuple[AbstractResource, Segments | None, str]]) -> bool:
    """Note the values of the shape's variable that another route takes first; False when another
    route could take any of its paths."""
    prefix = "/" + "/".join(str(s) for s in shape.template[: shape.depth])
    for other, segments, index_key in routes:
        if other in shape.resources:
            continue
        if index_key != prefix and not index_key.startswith(prefix + "/"):
            continue  # aiohttp tries it after the shape's own, or never on these paths
        if segments is None:
            return False
        if len(segments) != len(shape.template):
            continue  # a variable never spans a "/"
        if any(a is not None and b is not None and a != b for a, b in zip(segments, shape.template, strict=True)):
            continue
        taken = segments[shape.depth]
        if taken is None:
            return False
        shape.reserved.add(taken)
    return True


def application(**kwargs: Any) -> web.Application:
    """A web.Application on `Router` (aiohttp 3 marks its `router` argument deprecated; 3.x keeps
    it, and pyproject pins aiohttp below 4)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return web.Application(router=Router(), **kwargs)
