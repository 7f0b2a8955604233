"""Spawn (with and without await), continue-as-new and cost budgets through the official client
(api.md §4.9; engine.md §9.1)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest
from strait import AsyncClient

from tests.client_helpers import PARKED_AND_RESUMED, Gate, make_job, spawning_parent, state_changes, wait_terminal
from tests.conftest import SECRET, Endpoint, Server, wait_for
from tests.test_sdk_plane import run_http, sdk_endpoint


def test_spawn_with_await_resumes_the_parent_once_after_the_last_child(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    _, c, _ = clients
    gate = Gate()

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        headers = seen["headers"]
        body = seen["body"]
        if b'"child"' in body:
            if b'"slow"' in body:
                await gate.wait()
            return {"child_done": True}  # the fast one may end before the slow one is spawned
        if headers.get("X-Resume-Event-Key"):
            return {"parent_resumed": headers["X-Resume-Event-Key"]}
        for n in ("fast", "slow"):
            spawned = await rc.sdk_runs.spawn_run(
                run_id,
                {"job_slug": "child", "project_id": "p1", "payload": {"child": n}, "await_completion": True},
            )
            assert spawned["await_completion"] is True and spawned["await_event_key"] == f"spawn-await:{spawned['id']}"
            assert spawned["parent_run_id"] == run_id and spawned["triggered_by"] == "spawn"
        return {"parked": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    parent_job = make_job(c, endpoint, slug="parent")
    make_job(c, endpoint, slug="child")
    parent = c.jobs.trigger(parent_job["id"], {"payload": {"role": "parent"}})["id"]
    wait_for(lambda: len(c.runs.get_children(parent)["data"]) == 2, what="two children")
    children = c.runs.get_children(parent)["data"]
    fast = next(ch for ch in children if ch["payload"] == {"child": "fast"})
    slow = next(ch for ch in children if ch["payload"] == {"child": "slow"})
    wait_terminal(c, fast["id"])
    assert c.runs.get(parent)["status"] == "waiting"  # one child still running
    wait_for(lambda: gate.bound, what="the slow child started")
    gate.open()
    run = wait_terminal(c, parent)
    assert not errors, errors
    assert run["status"] == "completed" and run["result"] == {"parent_resumed": "spawn-await"}
    assert c.runs.get(slow["id"])["status"] == "completed"
    parent_dispatches = [r for r in endpoint.requests if r["headers"]["X-Run-ID"] == parent]
    assert len(parent_dispatches) == 2  # resumed exactly once
    waits = {t["event_key"]: t["status"] for t in c.event_triggers.list_events()["data"]}
    assert waits == {f"spawn-await:{fast['id']}": "received", f"spawn-await:{slow['id']}": "received"}


def test_children_spawned_one_after_another_resume_the_parent_once_its_call_returned(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    """Each child ends before the parent's call spawns the next, so the parent's count of awaited
    children falls to zero between spawns: the parent still resumes once, after the call that
    parked it has returned and its last child has ended, and every spawn of that call is answered
    (the call's token stays good while it runs: migration 0016)."""
    _, c, _ = clients
    answered: list[str] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        if b'"child"' in seen["body"]:
            return {"child": True}
        if seen["headers"].get("X-Resume-Event-Key"):
            return {"resumed": seen["headers"]["X-Resume-Event-Key"]}
        async with httpx.AsyncClient(
            base_url=strait.base, headers={"Authorization": f"Bearer {SECRET}"}, timeout=10
        ) as manage:
            for i in range(3):
                child = await rc.sdk_runs.spawn_run(
                    run_id, {"job_slug": "child", "project_id": "p1", "payload": {"child": i}, "await_completion": True}
                )
                answered.append(child["id"])
                for _ in range(400):  # this child ends before the next is spawned
                    if (await manage.get(f"/v1/runs/{child['id']}")).json()["status"] == "completed":
                        break
                    await asyncio.sleep(0.025)
                else:
                    raise AssertionError(f"child {i} did not end")
                assert (await manage.get(f"/v1/runs/{run_id}")).json()["status"] == "waiting"
        return {"parked": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    parent = spawning_parent(c, endpoint)
    run = wait_terminal(c, parent, timeout=30)
    assert not errors, errors
    assert len(answered) == 3
    assert run["status"] == "completed" and run["result"] == {"resumed": "spawn-await"}
    assert len([r for r in endpoint.requests if r["headers"]["X-Run-ID"] == parent]) == 2
    assert state_changes(c, parent) == PARKED_AND_RESUMED


@pytest.mark.parametrize("child_first", [True, False], ids=["child-ends-first", "event-comes-first"])
def test_a_run_waiting_on_an_event_and_an_awaited_child_resumes_once_both_came(
    clients: Any, endpoint: Endpoint, strait: Server, child_first: bool
) -> None:
    """A call parks its run on an event, then spawns a child it awaits: the run resumes once, after
    the event and the child's end, in either order (a child that ends first counts its parent down
    although the event's wait is still open)."""
    _, c, _ = clients
    gate = Gate()

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        if b'"child"' in seen["body"]:
            if not child_first:
                await gate.wait()
            return {"child": True}
        if seen["headers"].get("X-Resume-Event-Key"):
            return {"resumed": seen["headers"]["X-Resume-Event-Key"]}
        await rc.sdk_runs.wait_for_event_run(run_id, {"event_key": "both:1", "timeout_secs": 60})
        await rc.sdk_runs.spawn_run(
            run_id, {"job_slug": "child", "project_id": "p1", "payload": {"child": 1}, "await_completion": True}
        )
        return {"parked": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    parent = spawning_parent(c, endpoint)
    wait_for(lambda: len(c.runs.get_children(parent)["data"]) == 1, what="the child")
    (child,) = c.runs.get_children(parent)["data"]
    if child_first:
        wait_terminal(c, child["id"])
        assert c.runs.get(parent)["status"] == "waiting"  # the event has not come
        c.event_triggers.send_event("both:1", {"payload": {"n": 1}})
    else:
        wait_for(lambda: gate.bound, what="the child started")
        c.event_triggers.send_event("both:1", {"payload": {"n": 1}})
        # a send resumes its run in its own statement: answered, it has decided (the child has not ended)
        assert c.runs.get(parent)["status"] == "waiting"
        gate.open()
    run = wait_terminal(c, parent, timeout=30)
    assert not errors, errors
    assert run["status"] == "completed"
    assert run["result"] == {"resumed": "both:1" if child_first else "spawn-await"}
    assert len([r for r in endpoint.requests if r["headers"]["X-Run-ID"] == parent]) == 2
    assert state_changes(c, parent) == PARKED_AND_RESUMED


def test_many_children_ending_together_resume_the_parent_exactly_once(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    """Children that end in the same instant (separate transactions) race for the parent: the
    counter on the parent row makes exactly one of them resume it."""
    _, c, _ = clients

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        if b'"child"' in seen["body"]:
            return {"ok": True}
        if seen["headers"].get("X-Resume-Event-Key"):
            return {"resumed": True}
        await asyncio.gather(
            *(
                rc.sdk_runs.spawn_run(
                    run_id, {"job_slug": "child", "project_id": "p1", "payload": {"child": i}, "await_completion": True}
                )
                for i in range(20)
            )
        )
        return {"parked": True}

    errors = sdk_endpoint(strait, endpoint, handler)
    parent = spawning_parent(c, endpoint)
    run = wait_terminal(c, parent, timeout=30)
    assert not errors, errors
    assert run["status"] == "completed" and run["result"] == {"resumed": True}
    assert len([r for r in endpoint.requests if r["headers"]["X-Run-ID"] == parent]) == 2
    assert all(ch["status"] == "completed" for ch in c.runs.get_children(parent)["data"])


def test_spawn_into_another_project_needs_its_key(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    admin, c, _ = clients
    admin.projects.create({"id": "p2", "org_id": "o1", "name": "P2"})
    p2_key = admin.api_keys.create({"project_id": "p2", "name": "k2", "scopes": ["jobs:trigger"]})["key"]
    p2_reader = admin.api_keys.create({"project_id": "p2", "name": "r2", "scopes": ["jobs:read"]})["key"]
    answers: list[int] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        if b'"child"' in seen["body"]:
            return {"child": True}
        base = {"job_slug": "other", "project_id": "p2", "payload": {"child": True}}
        async with run_http(strait, seen) as h:
            for extra in (
                {},
                {"target_api_key": "strait_nope"},
                {"target_api_key": p2_reader},
                {"target_api_key": p2_key},
            ):
                r = await h.post(f"/sdk/v1/runs/{run_id}/spawn", json={**base, **extra})
                answers.append(r.status_code)
            r = await h.post(f"/sdk/v1/runs/{run_id}/spawn", json={"job_slug": "missing", "project_id": "p1"})
            answers.append(r.status_code)
            r = await h.post(f"/sdk/v1/runs/{run_id}/spawn", json={"project_id": "p1"})
            answers.append(r.status_code)
        return {"parent": True}

    sdk_endpoint(strait, endpoint, handler)
    with httpx.Client(base_url=strait.base, headers={"Authorization": f"Bearer {SECRET}"}) as p2:
        made = p2.post(
            "/v1/jobs", json={"project_id": "p2", "name": "Other", "slug": "other", "endpoint_url": endpoint.url}
        )
        assert made.status_code == 201, made.text
    job = make_job(c, endpoint, slug="parent")
    parent = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    wait_terminal(c, parent)
    assert answers == [400, 401, 403, 201, 404, 422]
    (child,) = c.runs.get_children(parent)["data"] or [None]  # the child lives in p2: not listed for p1's key
    assert child is None or child["project_id"] == "p2"


def test_continue_as_new_builds_a_lineage_up_to_the_cap(clients: Any, endpoint: Endpoint, strait: Server) -> None:
    _, c, _ = clients
    statuses: list[int] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        async with run_http(strait, seen) as h:
            r = await h.post(f"/sdk/v1/runs/{run_id}/continue", json={"payload": {"step": 1}})
            statuses.append(r.status_code)
        return {"continued": r.status_code == 201}

    sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint)
    first = c.jobs.trigger(job["id"], {"payload": {"step": 0}})["id"]
    wait_for(lambda: len(statuses) == 11, timeout=30, what="eleven dispatches")
    assert statuses == [201] * 10 + [400]
    with httpx.Client(base_url=strait.base, headers={"Authorization": f"Bearer {SECRET}", "X-Project-Id": "p1"}) as h:
        chain = h.get(f"/v1/runs/{first}/lineage").json()["data"]
    assert [r["lineage_depth"] for r in chain] == list(range(11))
    assert chain[0]["id"] == first and all(r["continuation_of"] == p["id"] for p, r in itertools.pairwise(chain))
    assert all(r["payload"] == {"step": 1} for r in chain[1:])


def test_budgets_daily_cap_refuses_triggers_and_per_run_cap_fails_the_run(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    _, c, _ = clients
    admin_h = {"Authorization": f"Bearer {SECRET}"}
    r = httpx.put(
        f"{strait.base}/v1/projects/p1/quotas",
        headers=admin_h,
        json={"max_daily_cost_microusd": 50_000, "max_cost_per_run_microusd": 30_000},
    )
    assert r.status_code == 200 and r.json()["max_daily_cost_microusd"] == 50_000
    answers: list[Any] = []

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        async with run_http(strait, seen) as h:
            for cost in (20_000, 20_000):
                r = await h.post(
                    f"/sdk/v1/runs/{run_id}/usage", json={"provider": "p", "model": "m", "cost_microusd": cost}
                )
                answers.append((r.status_code, r.json().get("message", "")))
        return {"http": True}

    sdk_endpoint(strait, endpoint, handler)
    job = make_job(c, endpoint, max_attempts=3)
    run_id = c.jobs.trigger(job["id"], {"payload": {}})["id"]
    run = wait_terminal(c, run_id)
    # the run fails in the usage call's own statement: its answer reaches the endpoint just after
    wait_for(lambda: len(answers) == 2, what="both usage calls answered")
    assert [s for s, _ in answers] == [201, 429]
    assert "per-run cost budget exceeded" in answers[1][1]
    assert (run["status"], run["error_class"], run["attempt"]) == ("failed", "budget", 1)
    assert sum(u["cost_microusd"] for u in c.runs.get_usage(run_id)["data"]) == 40_000
    # 40,000 of 50,000 spent today: one more run may spend 20,000, then triggers are refused
    second = c.jobs.trigger(job["id"], {"payload": {"n": 2}})["id"]
    wait_terminal(c, second)

    def refused() -> bool:
        r = httpx.post(
            f"{strait.base}/v1/jobs/{job['id']}/trigger",
            headers={"Authorization": f"Bearer {c._config.auth.token}"},
            json={"payload": {"n": 3}},
        )
        if r.status_code == 201:
            return False
        assert r.status_code == 429 and "daily cost budget exceeded" in r.json()["message"], r.text
        return True

    wait_for(refused, what="the daily budget refusing triggers")


def test_canceling_a_parent_cancels_its_unfinished_descendants(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    _, c, _ = clients
    gate = Gate()

    async def handler(rc: AsyncClient, run_id: str, seen: dict[str, Any]) -> Any:
        if b'"child"' in seen["body"]:
            if b'"quick"' in seen["body"]:
                return {"quick": True}
            await gate.wait()
            return {"late": True}
        if seen["headers"].get("X-Resume-Event-Key"):
            return {"resumed": True}
        for n in ("quick", "slow"):
            await rc.sdk_runs.spawn_run(run_id, {"job_slug": "child", "project_id": "p1", "payload": {"child": n}})
        await rc.sdk_runs.spawn_run(
            run_id, {"job_slug": "child", "project_id": "p1", "payload": {"child": "awaited"}, "await_completion": True}
        )
        return {"parked": True}

    sdk_endpoint(strait, endpoint, handler)
    parent = spawning_parent(c, endpoint)

    def settled() -> bool:
        kids = {ch["payload"]["child"]: ch["status"] for ch in c.runs.get_children(parent)["data"]}
        return (
            kids.get("quick") == "completed" and kids.get("slow") == "executing" and kids.get("awaited") == "executing"
        )

    wait_for(settled, what="children running")
    assert c.runs.get(parent)["status"] == "waiting"
    canceled = c.runs.delete(parent)
    assert canceled["status"] == "canceled" and canceled["id"] == parent
    kids = {ch["payload"]["child"]: ch["status"] for ch in c.runs.get_children(parent)["data"]}
    assert kids == {"quick": "completed", "slow": "canceled", "awaited": "canceled"}
    waits = {t["event_key"].split(":")[0]: t["status"] for t in c.event_triggers.list_events()["data"]}
    assert waits == {"spawn-await": "canceled"}
    gate.open()
    wait_for(lambda: len([r for r in endpoint.requests if b'"child"' in r["body"]]) == 3, what="child calls")
    # the late answers of the canceled children are dropped; the parent is never resumed
    assert c.runs.get(parent)["status"] == "canceled"
    assert len([r for r in endpoint.requests if r["headers"]["X-Run-ID"] == parent]) == 1


def test_a_quota_time_zone_is_accepted_only_when_triggers_can_use_it(
    clients: Any, endpoint: Endpoint, strait: Server
) -> None:
    """Python's zone database and PostgreSQL's differ at the edges: a name the quota PUT accepts
    must work in every later trigger's budget check; one it cannot use is a 400 at the PUT."""
    _, c, _ = clients
    admin_h = {"Authorization": f"Bearer {SECRET}"}
    job = make_job(c, endpoint)
    outcomes: dict[str, int] = {}
    for tz in ("Europe/Paris", "posixrules", "Factory", "localtime", "posix/Europe/Paris", "right/UTC", "Nope/Zone"):
        body = {"max_daily_cost_microusd": 1_000_000, "timezone": tz}
        r = httpx.put(f"{strait.base}/v1/projects/p1/quotas", headers=admin_h, json=body)
        outcomes[tz] = r.status_code
        if r.status_code == 400:
            assert r.json()["message"] == f"timezone {tz!r} is not a known time zone", r.text
            continue
        assert r.status_code == 200 and r.json()["timezone"] == tz, r.text
        run = c.jobs.trigger(job["id"], {"payload": {"tz": tz}})
        assert run["status"] == "queued"
    assert outcomes["Europe/Paris"] == 200 and outcomes["Nope/Zone"] == 400
