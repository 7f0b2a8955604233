"""LoopActor: messages run on its loop; stop drains, cancels tracked tasks and closes; a loop bug restarts it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

from strait_actors.actors.base import TreeContext
from strait_actors.actors.clock import Clock
from strait_actors.actors.loop import LoopActor
from strait_actors.actors.supervisor import ChildSpec, RestartPolicy, Supervisor
from strait_actors.settings import Settings
from tests.conftest import wait_for


class Park:
    """Test message: spawn a task that waits until it is cancelled."""


class Boom:
    """Test message: the loop-side handler raises."""


class Recorder(LoopActor):
    """Records each hook and whether it ran on the actor's loop thread."""

    name = "recorder"
    instances: ClassVar[list[Recorder]] = []  # the test's window into the actors it started
    fail_open = False

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.events: list[tuple[Any, ...]] = []
        type(self).instances.append(self)

    def _on_loop(self) -> bool:
        return threading.current_thread() is self.thread

    async def open(self) -> None:
        self.events.append(("open", self._on_loop()))
        if type(self).fail_open:
            raise RuntimeError("cannot open")

    def handle(self, message: Any) -> None:
        self.events.append(("handle", type(message).__name__, self._on_loop()))
        if isinstance(message, Park):
            self.spawn(self._park())
        elif isinstance(message, Boom):
            raise RuntimeError("a bug on the loop")

    async def _park(self) -> None:
        self.events.append(("parked",))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.events.append(("cancelled", self._on_loop()))
            raise

    async def drain(self, grace: float) -> None:
        self.events.append(("drain", grace, self._on_loop()))

    async def close(self) -> None:
        self.events.append(("close", self._on_loop()))


def _ctx(settings: Settings) -> TreeContext:
    return TreeContext(settings=settings, dsn="unused", worker_id="w")


def test_messages_run_on_the_loop_and_stop_drains_then_cancels_and_closes(settings: Settings) -> None:
    Recorder.instances, Recorder.fail_open = [], False
    ref = Recorder.start(_ctx(settings))
    actor = wait_for(lambda: Recorder.instances and Recorder.instances[0], what="the actor")
    ref.tell(Park())
    wait_for(lambda: ("parked",) in actor.events, what="the parked task")
    thread = actor.thread
    assert thread is not None and thread.is_alive()
    ref.stop(block=True, timeout=10)
    assert actor.events == [
        ("open", True),
        ("handle", "Park", True),
        ("parked",),
        ("drain", settings.worker_drain_timeout_secs, True),
        ("cancelled", True),
        ("close", True),
    ]
    assert not thread.is_alive()
    assert actor.loop is None


def test_a_failing_open_leaves_no_loop_thread_behind(settings: Settings) -> None:
    Recorder.instances, Recorder.fail_open = [], True
    try:
        ref = Recorder.start(_ctx(settings))
        wait_for(lambda: not ref.is_alive(), what="the failed start")
    finally:
        Recorder.fail_open = False
    actor = Recorder.instances[0]
    assert actor.events == [("open", True), ("close", True)]
    assert actor.thread is not None and not actor.thread.is_alive()


def test_a_bug_on_the_loop_kills_the_actor_and_the_supervisor_restarts_it(settings: Settings) -> None:
    Recorder.instances, Recorder.fail_open = [], False
    ctx = _ctx(settings)
    failed = threading.Event()
    policy = RestartPolicy(base_delay=0.01, max_restarts=5)
    sup = Supervisor.start(ctx, Clock(ctx.registry), [ChildSpec("recorder", Recorder.start)], policy, failed)
    try:
        first = wait_for(lambda: Recorder.instances and Recorder.instances[0], what="the first start")
        wait_for(lambda: ctx.registry.get("recorder"), what="registered")
        assert ctx.registry.tell("recorder", Boom())
        second = wait_for(lambda: len(Recorder.instances) == 2 and Recorder.instances[1], what="the restart")
        wait_for(lambda: ("open", True) in second.events, what="the new loop opened")
        assert ("close", True) in first.events, "the crashed actor closed its loop"
        assert first.thread is not None and not first.thread.is_alive()
        assert not failed.is_set()
        current = ctx.registry.get("recorder")
        assert current is not None and current.is_alive()
    finally:
        sup.stop(block=True, timeout=10)
    assert not current.is_alive()
    assert second.thread is not None and not second.thread.is_alive()
