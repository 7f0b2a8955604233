"""schemathesis over every operation of the OpenAPI document, against a live server: shared by
tests/test_openapi.py (bounded, seeded) and scripts/fuzz_openapi.py (many examples, any server).

Each operation is fuzzed in both generation modes (positive: requests the document calls valid;
negative: requests it calls invalid), half of the cases on real resources (World.params) so that
a path parameter reaches the handler's deeper code instead of its 404. Checks: no 5xx
(`not_a_server_error`), and the status code, media type and body of every answer are the ones the
document gives for that operation.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
_PARAM = re.compile(r"\{(\w+)\}")
# operations that end the SDK plane's live run go after the rest of its calls; what deletes goes last
_ENDS_RUN = ("/complete", "/fail")
# the spare job's routes: the fuzz may reshape or delete that job (never the one runs are triggered on)
_SPARE = re.compile(r"^/v1/jobs/\{job_id\}(/pause|/resume|/dependencies.*)?$")


@dataclass
class World:
    """Credentials and real resources the cases use."""

    management: dict[str, str]  # headers of a /v1 call
    run_token: dict[str, str] | None  # headers of an SDK call (the live run's token), if any
    params: dict[str, list[str]]  # path parameter -> real values
    spare: dict[str, list[str]] = field(default_factory=dict)  # the same, for the spare job's routes
    sdk_run: str | None = None  # the run the token is for


@dataclass
class Report:
    operations: int = 0
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # operation -> wall time of its cases


def _order(method: str, path: str) -> int:
    if method == "DELETE":
        return 4
    if path.startswith("/sdk/"):
        return 1 if path.endswith(_ENDS_RUN) else 0
    return 2 if method in ("POST", "PUT", "PATCH") else 3


def _pool(world: World, method: str, path: str) -> dict[str, list[str]]:
    if path.startswith("/sdk/"):
        return {**world.params, "run_id": [world.sdk_run]} if world.sdk_run else {}
    if _SPARE.match(path) and (method != "GET" or "/dependencies" in path):
        return {**world.params, **world.spare}
    return world.params


def _headers(world: World, path: str) -> dict[str, str]:
    if path.startswith("/sdk/"):
        return world.run_token or {}
    return world.management if path.startswith("/v1/") else {}


def _strategy(op: Any, mode: GenerationMode, pool: dict[str, list[str]]) -> Any:
    generated = op.as_strategy(generation_mode=mode)
    names = _PARAM.findall(op.path)
    if not names or not all(pool.get(n) for n in names):
        return generated
    # one strategy per combination of real values, built once (building one costs more than a draw)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*(pool[n] for n in names))]
    real = [op.as_strategy(generation_mode=mode, path_parameters=combo) for combo in combos]
    return st.one_of(st.one_of(real), generated)


def _fuzz(op: Any, base: str, world: World, examples: int, seed: bool, report: Report) -> None:
    headers = _headers(world, op.path)
    pool = _pool(world, op.method.upper(), op.path)
    session = requests.Session()
    # HEAD is GET without the body: a few cases say that it answers as its GET does
    head = op.method.upper() == "HEAD"
    for mode in (GenerationMode.POSITIVE,) if head else (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=_strategy(op, mode, pool))
        @settings(
            max_examples=max(1, examples // 4) if head else examples,
            deadline=None,
            database=None,
            derandomize=seed,
            phases=[Phase.explicit, Phase.generate],  # no shrinking against a live server: the report has curl
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        def case_passes(case: Any) -> None:
            report.requests += 1
            case.call_and_validate(base_url=base, headers=headers, checks=CHECKS, session=session, timeout=30)

        try:
            case_passes()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            # nothing in the operation can be made invalid (no parameter, no body): positive only
        except (Exception, FailureGroup) as exc:  # one operation's failure is reported with the others'
            report.failures.append(f"{op.method.upper()} {op.path} [{mode.value}]: {exc}")
    session.close()


def run_schemathesis(doc: dict[str, Any], base: str, world: World, *, examples: int, seed: bool) -> Report:
    """Every operation of `doc`, writes before reads, deletes last; failures collected, not raised."""
    schema = schemathesis.openapi.from_dict(doc)
    ops = [result.ok() for result in schema.get_all_operations()]
    ops.sort(key=lambda op: _order(op.method.upper(), op.path))
    report = Report()
    for op in ops:
        report.operations += 1
        started = time.monotonic()
        _fuzz(op, base, world, examples, seed, report)
        report.seconds[f"{op.method.upper()} {op.path}"] = time.monotonic() - started
    return report


def api_world(base: str, secret: str, endpoint_url: str | None = None) -> World:
    """Real resources made through the API alone (scripts/fuzz_openapi.py, any server): two fresh
    projects, a job (dispatched to `endpoint_url`, else a worker-mode job nothing dispatches), a
    spare job, runs, a version, a dependency, a key, an environment and a group."""
    tag = uuid.uuid4().hex[:8]
    p1, p2 = f"fz-{tag}", f"fz-{tag}-b"
    headers = {"Authorization": f"Bearer {secret}", "X-Actor-Id": "fuzz", "X-Project-Id": p1}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as c:

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = c.post(path, json=body)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"setup {path}: {r.status_code} {r.text}")
            return dict(r.json())

        for pid in (p1, p2):
            post("/v1/projects", {"id": pid, "org_id": f"o-{tag}", "name": pid})
        target = {"endpoint_url": endpoint_url} if endpoint_url else {"execution_mode": "worker"}
        ok = post("/v1/jobs", {"project_id": p1, "name": "OK", "slug": "ok", **target})["id"]
        spare = post("/v1/jobs", {"project_id": p1, "name": "Spare", "slug": "spare", "execution_mode": "worker"})["id"]
        c.patch(f"/v1/jobs/{ok}", json={"description": "v2"}).raise_for_status()
        version = c.get(f"/v1/jobs/{ok}/versions").json()["data"][0]["version_id"]
        dep = post(f"/v1/jobs/{spare}/dependencies", {"depends_on_job_id": ok})["id"]
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        runs = [post(f"/v1/jobs/{ok}/trigger", {"payload": {"n": 1}})["id"]]
        runs.append(post(f"/v1/jobs/{ok}/trigger", {"payload": {}, "scheduled_at": later})["id"])
        key = post("/v1/api-keys", {"project_id": p1, "name": "spare", "scopes": ["*"]})["id"]
        env = post("/v1/environments", {"name": "staging", "variables": {"REGION": "eu"}})["id"]
        group = post("/v1/job-groups", {"name": "g"})["id"]
    return World(
        management=headers,
        run_token=None,
        params={
            "job_id": [ok],
            "version_id": [version],
            "run_id": runs,
            "key_id": [key],
            "env_id": [env],
            "group_id": [group],
            "project_id": [p2],
        },
        spare={"job_id": [spare], "dep_id": [dep]},
    )
