"""What every supervised actor shares: a registry of its siblings and failure reporting."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka

from strait_actors.messages import ChildFailed
from strait_actors.settings import Settings

log = logging.getLogger(__name__)


class Registry:
    """Names -> current actor refs of one tree; a restarted child replaces its entry."""

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._lock = threading.Lock()

    def put(self, name: str, ref: pykka.ActorRef[Any] | None) -> None:
        with self._lock:
            if ref is None:
                self._refs.pop(name, None)
            else:
                self._refs[name] = ref

    def get(self, name: str) -> pykka.ActorRef[Any] | None:
        with self._lock:
            return self._refs.get(name)

    def tell(self, name: str, message: object) -> bool:
        """Send if the actor is alive; a message to a dead or restarting actor is dropped (a hint only)."""
        ref = self.get(name)
        if ref is None:
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True


@dataclass
class TreeContext:
    """What the composition root hands to every actor of one worker process."""

    settings: Settings
    dsn: str
    worker_id: str
    registry: Registry = field(default_factory=Registry)
    actors: tuple[str, ...] = ()  # the tree's children by name (the Beacon reports each)


class SupervisedActor(pykka.ThreadingActor):
    """A child of the Supervisor: reports its death so that it is restarted."""

    name = "actor"

    def __init__(self, ctx: TreeContext) -> None:
        super().__init__()
        self.ctx = ctx

    def on_start(self) -> None:
        """Run `started`; a failure is reported to the supervisor here (pykka calls no on_failure)."""
        try:
            self.started()
        except Exception as exc:
            # pykka calls no on_failure for a failing on_start: report it here
            self.cleanup()
            self._report(exc)
            raise

    def on_stop(self) -> None:
        """A requested stop: release resources."""
        self.cleanup()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """A handler raised: release resources, then report the death so the supervisor restarts us."""
        try:
            self.cleanup()
        finally:
            self._report(exception_value)

    def _report(self, exc: BaseException | None) -> None:
        log.error("%s failed: %r", self.name, exc)
        self.ctx.registry.tell("supervisor", ChildFailed(self.name, repr(exc)))

    def started(self) -> None:
        """Acquire resources; runs in the actor's thread."""

    def cleanup(self) -> None:
        """Release resources; runs on stop and on failure, so it must tolerate half-started state."""
