"""The official client's side of the end-to-end tests: an admin client, a project with a key,
a job on a test endpoint, and waiting for a run to end."""

from __future__ import annotations

import asyncio
from typing import Any

from strait import Client

from tests.conftest import SECRET, Endpoint, Server, wait_for

TERMINAL = {"completed", "failed", "timed_out", "crashed", "system_failed", "canceled", "expired", "dead_letter"}


class Gate:
    """What endpoint handlers wait on, opened from the test's thread (the endpoint has its own loop)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        """Called in a handler: the loop the gate is opened on."""
        self.loop = asyncio.get_running_loop()

    @property
    def bound(self) -> bool:
        return self.loop is not None

    async def wait(self) -> None:
        self.bind()
        await self.event.wait()

    def is_open(self) -> bool:
        return self.event.is_set()

    def open(self) -> None:
        assert self.loop is not None, "no handler has reached the gate"
        self.loop.call_soon_threadsafe(self.event.set)


def admin_client(server: Server) -> Client:
    # retry=None: a 5xx must show up as a failure, not be retried away by the client
    return Client(base_url=server.base, bearer_token=SECRET, default_headers={"X-Actor-Id": "admin"}, retry=None)


def setup(server: Server, scopes: list[str] | None = None) -> tuple[Client, Client, dict[str, Any]]:
    """admin client, a project p1, an API key and a client that uses it."""
    admin = admin_client(server)
    admin.projects.create({"id": "p1", "org_id": "o1", "name": "P1"})
    key = admin.api_keys.create({"project_id": "p1", "name": "k", "scopes": scopes or ["*"]})
    return admin, Client(base_url=server.base, api_key=key["key"], retry=None), key


def make_job(c: Client, endpoint: Endpoint, slug: str = "j", **extra: Any) -> dict[str, Any]:
    return dict(
        c.jobs.create(
            {
                "project_id": "p1",
                "name": f"Job {slug}",
                "slug": slug,
                "endpoint_url": endpoint.url,
                "timeout_secs": 10,
                **extra,
            }
        )
    )


def wait_terminal(c: Client, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = c.runs.get(run_id)
        return run if run["status"] in TERMINAL else None

    result: dict[str, Any] = wait_for(done, timeout, what=f"run {run_id} terminal")
    return result


# The statuses of a run that parked once and was resumed once (api.md §5.6), as `state_changes` reads them.
PARKED_AND_RESUMED = [
    ("queued", "executing"),
    ("executing", "waiting"),
    ("waiting", "queued"),
    ("queued", "executing"),
    ("executing", "completed"),
]


def state_changes(c: Client, run_id: str) -> list[tuple[str, str]]:
    """A run's status changes, oldest first, from its `state_change` events."""
    events = c.runs.list_events(run_id)["data"]
    return [(e["data"]["from"], e["data"]["to"]) for e in events if e["type"] == "state_change"]


def spawning_parent(c: Client, endpoint: Endpoint) -> str:
    """Jobs `parent` and `child` on `endpoint`, and a run of `parent` triggered: its id."""
    parent_job = make_job(c, endpoint, slug="parent")
    make_job(c, endpoint, slug="child")
    return str(c.jobs.trigger(parent_job["id"], {"payload": {}})["id"])
