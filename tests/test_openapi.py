"""The OpenAPI document (GET /openapi.json): it covers the router exactly, it is a valid OpenAPI 3.1
document (openapi-spec-validator: the 3.1 meta-schema, and every Schema Object against the 3.1
dialect), and schemathesis, run from it against a live `strait --mode all`, finds no 5xx and no
answer outside what the document promises (status code, media type, body schema).

The schemathesis run here is bounded (EXAMPLES per operation and generation mode, seeded); the
same run with many more examples against any server is scripts/fuzz_openapi.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from strait_actors.api import openapi
from strait_actors.api.app import create_app
from strait_actors.settings import load
from tests.conftest import JWT_KEY, SECRET, Endpoint, Server, start_strait, stop_strait, wait_for
from tests.openapi_fuzz import World, api_world, run_schemathesis

EXAMPLES = 2  # per operation and generation mode (positive, negative); HEAD: 1, positive only


def _app() -> web.Application:
    return create_app(load(environ={"INTERNAL_SECRET": SECRET, "JWT_SIGNING_KEY": JWT_KEY}), "postgresql:///unused")


def _router_operations(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        out.add((route.method, info.get("formatter") or info.get("path") or ""))
    return out


def _document_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_document_covers_the_router_both_ways() -> None:
    """Every route (method and path, HEAD too) is documented and nothing else is; every entry of
    OPERATIONS names a route. A route added without an entry fails here."""
    app = _app()
    doc = json.loads(app[openapi.DOCUMENT])
    routed = _router_operations(app)
    documented = _document_operations(doc)
    assert routed - documented == set(), "routes without documentation (add them to openapi.OPERATIONS)"
    assert documented - routed == set()
    described = {(m, p) for m, p in routed if m != "HEAD"}
    assert set(openapi.OPERATIONS) == described, "OPERATIONS entries for routes the app no longer has"
    for method, path in routed:
        params = [p["name"] for p in doc["paths"][path][method.lower()]["parameters"] if p["in"] == "path"]
        assert params == [s.split("}")[0] for s in path.split("{")[1:]], (method, path)


def test_a_route_without_an_entry_is_left_out() -> None:
    """The check above can fail: a route with no entry in OPERATIONS is not in the document."""
    app = _app()

    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v1/undocumented", undocumented)
    doc = openapi.build(app)
    assert ("POST", "/v1/undocumented") in _router_operations(app)
    assert ("POST", "/v1/undocumented") not in _document_operations(doc)


def test_document_is_valid_openapi_3_1() -> None:
    doc = json.loads(_app()[openapi.DOCUMENT])
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on the first error: the 3.1 meta-schema, then each Schema Object
    broken = json.loads(json.dumps(doc))
    broken["components"]["schemas"]["Run"]["properties"]["attempt"] = {"type": "whole number"}
    with pytest.raises(Exception, match="whole number"):
        validate(broken)


def test_job_and_trigger_bodies_come_from_the_validators() -> None:
    """One table drives the validation and the document: each field of the job and trigger tables
    is a property of the documented body, with the validator's bounds."""
    from strait_actors.api import validation
    from strait_actors.model import RunRequest

    schemas = json.loads(_app()[openapi.DOCUMENT])["components"]["schemas"]
    assert set(schemas["JobCreate"]["properties"]) == set(validation._JOB_FIELDS)
    assert set(schemas["JobPatch"]["properties"]) == set(validation._PATCH_FIELDS)
    assert (
        set(schemas["Trigger"]["properties"]) == set(validation.TRIGGER_FIELDS) == set(RunRequest.__dataclass_fields__)
    )
    assert schemas["JobCreate"]["properties"]["max_attempts"]["maximum"] == 100
    assert schemas["JobCreate"]["properties"]["timeout_secs"]["maximum"] == validation.MAX_TIMEOUT_SECS
    assert schemas["Trigger"]["properties"]["priority"]["maximum"] == 10


# ----------------------------------------------------------------------------- schemathesis, live


def _wait_then_answer(server: Server) -> Any:
    """The job endpoint's behaviour: park the run on an event through the SDK plane (with the
    dispatch's own run token), then answer; the run waits, so the SDK plane has a live run."""

    def behave(seen: dict[str, Any]) -> Any:
        run_id, token = seen["headers"].get("X-Run-ID"), seen["headers"].get("X-Run-Token")
        payload = json.loads(seen["body"] or b"{}")  # the fuzz triggers this job with any payload
        if isinstance(payload, dict) and payload.get("mode") == "wait":
            r = httpx.post(
                f"{server.base}/sdk/v1/runs/{run_id}/wait-for-event",
                headers={"Authorization": f"Bearer {token}"},
                json={"event_key": "openapi-evt", "timeout_secs": 600},
            )
            seen["wait"] = r.status_code
        return {"ok": True}

    return behave


def _world(server: Server, endpoint: Endpoint) -> World:
    """api_world's resources, its job dispatched to `endpoint`, plus a run parked in waiting on an
    event key (the SDK plane's live run, with its run token, and the event routes' real key)."""
    endpoint.behave = _wait_then_answer(server)
    world = api_world(server.base, SECRET, endpoint.url)
    with httpx.Client(base_url=server.base, headers=world.management, timeout=30) as c:
        job, done = world.params["job_id"][0], world.params["run_id"][0]
        r = c.post(f"/v1/jobs/{job}/trigger", json={"payload": {"mode": "wait"}})
        assert r.status_code == 201, r.text
        waiting = r.json()["id"]
        wait_for(lambda: c.get(f"/v1/runs/{done}").json()["status"] == "completed", what="a completed run")
        wait_for(lambda: c.get(f"/v1/runs/{waiting}").json()["status"] == "waiting", what="a waiting run")
    token = next(r["headers"]["X-Run-Token"] for r in endpoint.requests if r["headers"]["X-Run-ID"] == waiting)
    world.run_token = {"Authorization": f"Bearer {token}"}
    world.sdk_run = waiting
    world.params["run_id"].append(waiting)
    world.params["event_key"] = ["openapi-evt"]
    world.params["key"] = ["cursor"]
    return world


@pytest.fixture
def live(dsn: str, tmp_path: Path) -> Iterator[Server]:
    """`strait --mode all` whose run streams end after a second (a stream of a live run would
    otherwise stay open for SSE_MAX_CONN_DURATION_SECS)."""
    server = start_strait({"DATABASE_URL": dsn, "SSE_MAX_CONN_DURATION_SECS": "1"}, tmp_path)
    yield server
    stop_strait(server)


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(live: Server, endpoint: Endpoint) -> None:
    served = httpx.get(f"{live.base}/openapi.json")
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/json")
    doc = served.json()
    assert doc == json.loads(_app()[openapi.DOCUMENT])  # the live server serves what the router describes
    world = _world(live, endpoint)
    report = run_schemathesis(doc, live.base, world, examples=EXAMPLES, seed=True)
    assert report.operations == len(_document_operations(doc))
    assert not report.failures, "\n\n".join(report.failures)
    assert not [line for line in live.logs().splitlines() if "Traceback" in line or "ERROR" in line]
