"""What a hostile tenant sends is a 4xx in the contract's envelope, or stored and read back: never a
5xx, never a fetch on the tenant's behalf, never a stalled API."""

from __future__ import annotations

import threading
import time

import httpx

from tests.conftest import SECRET, Endpoint, Server
from tests.test_api_errors import Case, base_job, fixtures, no_traceback, run_cases


def test_schemas_fetch_nothing_and_cannot_stall_or_crash_triggers(strait: Server, endpoint: Endpoint) -> None:
    fixtures(strait, endpoint)
    remote = {"type": "object", "properties": {"a": {"$ref": endpoint.url}}}
    run_cases(
        strait,
        [
            Case(
                "remote $ref",
                "POST",
                "/v1/jobs",
                400,
                "points outside the schema",
                json=base_job(endpoint, payload_schema=remote),
            ),
            Case(
                "file $ref",
                "POST",
                "/v1/jobs",
                400,
                "points outside the schema",
                json=base_job(endpoint, result_schema={"$ref": "file:///etc/passwd"}),
            ),
            Case(
                "unresolvable $ref",
                "POST",
                "/v1/jobs",
                400,
                "cannot be resolved",
                json=base_job(endpoint, payload_schema={"$ref": "#/$defs/missing"}),
            ),
            Case(
                "bad pattern",
                "POST",
                "/v1/jobs",
                400,
                "regex",
                json=base_job(endpoint, payload_schema={"pattern": "("}),
            ),
        ],
    )
    assert endpoint.requests == [], "a schema made the API fetch its $ref"
    with strait.client("p1") as c:
        looping = c.post("/v1/jobs", json=base_job(endpoint, payload_schema={"$ref": "#"}))
        assert looping.status_code == 201, looping.text
        slow = c.post(
            "/v1/jobs",
            json=base_job(endpoint, payload_schema={"type": "string", "pattern": "^(a|aa)+$"}),
        )
        assert slow.status_code == 201, slow.text
        jobs = {"loop": looping.json()["id"], "slow": slow.json()["id"]}
        assert (
            "root:"
            not in c.post("/v1/jobs", json=base_job(endpoint, result_schema={"$ref": "file:///etc/passwd"})).text
        )
    run_cases(
        strait,
        [
            Case(
                "looping schema",
                "POST",
                f"/v1/jobs/{jobs['loop']}/trigger",
                400,
                "references loop",
                json={"payload": {}},
            ),
            Case(
                "catastrophic pattern",
                "POST",
                f"/v1/jobs/{jobs['slow']}/trigger",
                400,
                "took longer than",
                json={"payload": "a" * 64 + "b"},
            ),
            Case(
                "bulk with a looping schema",
                "POST",
                f"/v1/jobs/{jobs['loop']}/trigger/bulk",
                400,
                "item 0",
                json={"items": [{"payload": {}}]},
            ),
        ],
    )
    with strait.client("p1") as c:
        ok = c.post(f"/v1/jobs/{jobs['slow']}/trigger", json={"payload": "aaaa"})
        assert ok.status_code == 201, "the safe regex engine still matches what it should"
    no_traceback(strait)


def test_slow_schemas_and_big_payloads_are_validated_off_the_event_loop(strait: Server, endpoint: Endpoint) -> None:
    """A schema that would take half a minute on a big payload gets the validation budget, in a
    worker thread: the API keeps answering everyone else meanwhile."""
    branches = [{"type": "object", "required": ["x"]}] * 50 + [{"type": "integer"}]
    with strait.client("p1") as c:
        c.post("/v1/projects", json={"id": "p1", "org_id": "o1", "name": "P1"}).raise_for_status()
        slow = c.post(
            "/v1/jobs", json=base_job(endpoint, payload_schema={"type": "array", "items": {"anyOf": branches}})
        )
        unique = c.post("/v1/jobs", json=base_job(endpoint, payload_schema={"type": "array", "uniqueItems": True}))
        plain = c.post("/v1/jobs", json=base_job(endpoint))
    answers: list[tuple[int, str, float]] = []

    def flood() -> None:
        with strait.client("p1") as c:
            started = time.monotonic()
            r = c.post(f"/v1/jobs/{slow.json()['id']}/trigger", json={"payload": list(range(20000))})
            answers.append((r.status_code, r.text, time.monotonic() - started))

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    worst = 0.0
    with strait.client("p1") as c:
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            assert c.get("/health").status_code == 200
            assert c.post(f"/v1/jobs/{plain.json()['id']}/trigger", json={}).status_code == 201
            worst = max(worst, time.monotonic() - started)
            threads[0].join(0.05)  # paced: a probe every 50 ms while the slow triggers run
        # 20,000 objects: uniqueItems is linear, not pairwise (seconds, before)
        items = [{"a": i, "b": [i, str(i)]} for i in range(20000)]
        assert c.post(f"/v1/jobs/{unique.json()['id']}/trigger", json={"payload": items}).status_code == 201
        twice = c.post(f"/v1/jobs/{unique.json()['id']}/trigger", json={"payload": [*items, {"b": [7, "7"], "a": 7.0}]})
        assert twice.status_code == 400 and "non-unique" in twice.text
    for t in threads:
        t.join()
    assert [a[0] for a in answers] == [400] * 4, answers
    assert all("took longer than" in a[1] for a in answers), answers
    assert max(a[2] for a in answers) < 5, answers
    assert worst < 1.0, f"the API stalled for {worst:.2f} s while the slow schemas ran"
    no_traceback(strait)


def test_odd_inputs_are_4xx_or_stored_and_read_back(strait: Server, endpoint: Endpoint) -> None:
    f = fixtures(strait, endpoint)
    deep = '{"a":' * 600 + "1" + "}" * 600
    run_cases(
        strait,
        [
            Case(
                "a cursor beyond bigint",
                "GET",
                f"/v1/runs/{f['run']}/events?cursor=2026-01-01T00:00:00Z|99999999999999999999999",
                400,
            ),
            Case("a non-string org_id", "POST", "/v1/projects", 422, json={"id": "p9", "org_id": 5, "name": "x"}),
            Case(
                "a non-string environment_id",
                "POST",
                "/v1/api-keys",
                422,
                json={"project_id": "p1", "name": "k", "scopes": ["*"], "environment_id": ["x"]},
            ),
            Case(
                "a non-string org_id on a key",
                "POST",
                "/v1/api-keys",
                422,
                json={"project_id": "p1", "name": "k", "scopes": ["*"], "org_id": {"a": 1}},
            ),
            Case("an over-deep payload_contains", "GET", f"/v1/runs?payload_contains={deep}", 400),
            Case(
                "1e400 in a payload",
                "POST",
                f"/v1/jobs/{f['job']}/trigger",
                400,
                "out of range",
                content=b'{"payload": {"x": 1e400}}',
                headers={"Content-Type": "application/json"},
            ),
            Case("a NUL in a path id", "GET", "/v1/runs/abc%00def", 404),
            Case("405", "PUT", "/v1/runs", 405),
        ],
    )
    for header in ("Authorization", "X-Internal-Secret"):
        for path in ("/health", "/v1/runs"):
            r = httpx.get(strait.base + path, headers=[(header.encode(), b"Bearer \xff\xfe" + SECRET.encode())])
            assert r.status_code in (200, 401), (header, path, r.status_code, r.text)
    with strait.client("p1") as c:
        big = "9" * 400
        job = c.post("/v1/jobs", json=base_job(endpoint)).json()["id"]
        run = c.post(
            f"/v1/jobs/{job}/trigger",
            content=b'{"payload": {"big": %s}}' % big.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert run.status_code == 201, run.text
        got = c.get(f"/v1/runs/{run.json()['id']}")
        assert got.status_code == 200, got.text
        assert f'"big":{big}' in got.text.replace(" ", ""), "the integer reads back whole"
        assert c.get("/v1/runs").status_code == 200
    no_traceback(strait)
