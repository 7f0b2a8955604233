"""LoopActor: a supervised actor whose work runs on a private asyncio loop in a thread of its own.

An actor that holds many calls in flight (the DispatcherPool, later the WebhookSender) cannot
block its pykka thread on each one, so it owns an event loop. The rule that keeps it simple:
the actor thread touches none of the subclass's state. Every message is handed to the loop
(`handle` runs there), so state is read and written by one thread only.

A bug on the loop (an exception nobody awaited) comes back to the actor as `LoopCrashed`; the
actor raises it in its own thread, dies, and its supervisor restarts it with a fresh loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pykka

from strait_actors.actors.base import SupervisedActor, TreeContext
from strait_actors.aio import new_event_loop
from strait_actors.messages import LoopCrashed

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 30.0  # connecting to the database at start-up; past it the start fails and is retried
CLOSE_TIMEOUT = 10.0
DRAIN_SLACK = 15.0  # beyond the drain grace: the writes that follow the last call


class LoopActor(SupervisedActor):
    """Owns an event loop thread; subclasses fill in the async hooks and `handle`."""

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__(ctx)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ hooks for subclasses
    async def open(self) -> None:
        """Acquire the loop's resources (connections, clients); runs on the loop before any message."""

    def handle(self, message: Any) -> None:
        """One message from the mailbox; runs on the loop, so it may touch the actor's state freely."""

    async def drain(self, grace: float) -> None:
        """Graceful stop: finish or give back work in flight within `grace` seconds; runs on the loop."""

    async def close(self) -> None:
        """Release what `open` acquired (tolerating a half-done `open`); tracked tasks are already cancelled."""

    @property
    def drain_grace(self) -> float:
        """How long `drain` may take on a graceful stop."""
        return self.ctx.settings.worker_drain_timeout_secs

    # ------------------------------------------------------------ actor thread
    def started(self) -> None:
        """Start the loop in its thread and run `open` on it; a failure here fails the start."""
        loop = self.loop = new_event_loop()
        loop.set_exception_handler(self._loop_error)
        self.thread = threading.Thread(target=loop.run_forever, name=f"strait-{self.name}", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.open(), loop).result(timeout=OPEN_TIMEOUT)

    def on_receive(self, message: Any) -> None:
        """Hand every message to the loop, except a crash report, which kills the actor here."""
        if isinstance(message, LoopCrashed):
            raise RuntimeError(f"{self.name} loop crashed: {message.reason}")
        self.call_soon(self.handle, message)

    def on_stop(self) -> None:
        """Graceful stop: `drain` on the loop, bounded by the grace period, then `cleanup`."""
        loop = self.loop
        if loop is not None and loop.is_running():
            grace = self.drain_grace
            try:
                asyncio.run_coroutine_threadsafe(self.drain(grace), loop).result(timeout=grace + DRAIN_SLACK)
            except Exception:
                log.exception("%s did not drain", self.name)
        self.cleanup()

    def cleanup(self) -> None:
        """Cancel tracked tasks, run `close`, stop the loop and join its thread; safe when half-started."""
        loop, self.loop = self.loop, None
        if loop is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=CLOSE_TIMEOUT)
            except Exception:
                log.exception("%s loop did not close cleanly", self.name)
            loop.call_soon_threadsafe(loop.stop)
        if self.thread is not None:
            self.thread.join(timeout=CLOSE_TIMEOUT)
        if loop.is_running():  # the join timed out: a closed running loop would raise; the thread is a daemon
            log.error("%s loop thread did not stop", self.name)
        else:
            loop.close()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Hand work to the loop from any thread (the one safe way in)."""
        assert self.loop is not None, "the loop runs between started() and cleanup()"
        self.loop.call_soon_threadsafe(callback, *args)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        log.error("%s loop error: %s", self.name, context.get("message"), exc_info=context.get("exception"))
        with contextlib.suppress(pykka.ActorDeadError):  # already dead: the supervisor knows
            self.actor_ref.tell(LoopCrashed(str(context.get("exception") or context.get("message"))))

    # ------------------------------------------------------------ loop thread
    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Start a task on the loop (call it on the loop) that is cancelled when the actor closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _shutdown(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.close()
