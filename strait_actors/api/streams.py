"""Live run streams (api.md §4.5): `GET /v1/runs/{runID}/stream` as Server-Sent Events.

A run's story is its `run_events` rows (every status change, written by the transition seam, and
every SDK log and progress event), so a stream is those rows, in order, as they are written. Each
API process hears them on its one listener connection (`coherence.ConfigFeed`, shared with the
caches); it registers the runs its clients watch in `run_watchers`, and every statement that
writes an event of a watched run NOTIFYs it. On a
notification the hub reads the new rows of that run once and fans them out in memory to every
stream of the run. A frame's `id:` is its event id, so a client that reconnects with
`Last-Event-ID` gets what it missed (an addition to §4.5, whose frames carry no id: clients that
ignore `id:` lines, such as the official client's parser, see the same `data:` frames).

With REDIS_URL set, notifications travel over Redis pub/sub instead: one API process of the
cluster (the holder of a PostgreSQL advisory lock) LISTENs and PUBLISHes each watched run's id on
`strait:run_events`; every API process subscribes there and reads the rows as above. The other
processes stand by for the lock, so one LISTEN connection serves the cluster; a process that takes
the role over (or re-subscribes after losing Redis) has every stream re-read what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from strait_actors import fsm, payloads
from strait_actors.errors import ApiError
from strait_actors.store.coherence import ConfigFeed
from strait_actors.store.errors import StoreError, translated
from strait_actors.store.sql import Row, execute, fetch_all, fetch_one, q

log = logging.getLogger(__name__)

RUN_EVENTS = "strait_run_events"  # what statements that write a watched run's events NOTIFY
REDIS_CHANNEL = "strait:run_events"
EVERY_RUN = "*"  # published when the bridge (re)starts: notifications may have been lost meanwhile
BRIDGE_LOCK = 0x5354524149540001  # pg_advisory_lock key of the Redis bridge ("STRAIT" + 1)
BRIDGE_RETRY_SECS = 2.0
WATCH_TTL_SECS = 120.0  # a watch not refreshed for this long belongs to a process that is gone
REFRESH_SECS = 30.0
RECONNECT_SECS = 1.0
RECHECK_SECS = 1.0  # a new stream reads its run's events again this long after connecting


def rfc3339_nano(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def frame(run: Row, event: Row) -> tuple[dict[str, Any], bool]:
    """The §4.5 message for one run event, and whether it ends the stream (a terminal status)."""
    stamp = rfc3339_nano(event["created_at"])
    data = event["data"] or {}
    if event["type"] == "state_change":
        msg: dict[str, Any] = {
            "type": "status_change",
            "run_id": str(run["id"]),
            "job_id": str(run["job_id"]),
            "project_id": run["project_id"],
            "from": data.get("from"),
            "to": data.get("to"),
            "timestamp": stamp,
        }
        if data.get("to") == fsm.S.FAILED and data.get("error") is not None:
            msg["error"] = data["error"]
        return msg, fsm.is_terminal(str(data.get("to")))
    return {
        "type": "event",
        "event_type": event["type"],
        "run_id": str(run["id"]),
        "level": event["level"],
        "message": event["message"],
        "data": data,
        "timestamp": stamp,
    }, False


class Subscriber:
    """One client's stream: the events after its cursor, queued for its writer."""

    def __init__(self, run_id: uuid.UUID, after_id: int) -> None:
        self.run_id = run_id
        self.after_id = after_id
        self.start_id = after_id  # the client's cursor when the stream began (after_id moves on)
        self.last_id = after_id  # the run's newest event when the stream began
        self.queue: asyncio.Queue[Row] = asyncio.Queue()


class StreamHub:
    """The API process's fan-out of run events to streams; it hears of them on the process's
    listener (`ConfigFeed.also`) or, with Redis, over pub/sub (and bridges when it holds the role)."""

    def __init__(self, dsn: str, pool: AsyncConnectionPool, feed: ConfigFeed, redis: Any = None) -> None:
        self.dsn = dsn
        self.feed = feed  # without Redis, notifications arrive on the process's one listener
        self.pool = pool
        self.redis = redis  # redis.asyncio.Redis: notifications over pub/sub (see the module doc)
        self.bridging = False
        self.outbox: set[str] = set()
        self.outbox_ready = asyncio.Event()
        self.watcher = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.subs: dict[uuid.UUID, set[Subscriber]] = {}
        self.dirty: set[uuid.UUID] = set()
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Before the feed starts: without Redis, the feed hears the run events too."""
        sources: tuple[Callable[[], Coroutine[Any, Any, None]], ...] = ()
        if self.redis is None:
            self.feed.also(RUN_EVENTS, self._mark_note, lambda: self._mark_note(EVERY_RUN))
        else:
            sources = (self._bridge, self._publish, self._subscribe_redis)
        self.tasks = [asyncio.create_task(run()) for run in (*sources, self._deliver, self._refresh)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # ------------------------------------------------------------ subscribers

    async def subscribe(self, run_id: uuid.UUID, after_id: int | None) -> Subscriber:
        """Watch the run (first), then take the cursor: nothing written after it is missed."""
        row = await fetch_one(
            self.pool, "watch_run", {"run_id": run_id, "watcher": self.watcher, "ttl": WATCH_TTL_SECS}
        )
        last = int(row["last_id"]) if row else 0
        sub = Subscriber(run_id, after_id if after_id is not None else last)
        sub.last_id = last
        self.subs.setdefault(run_id, set()).add(sub)
        # one read now: with Last-Event-ID what was missed comes first, and an event notified
        # between the watch and this line (dropped: the run had no subscriber yet) is not lost
        self._mark(run_id)
        return sub

    async def unsubscribe(self, sub: Subscriber) -> None:
        subs = self.subs.get(sub.run_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self.subs[sub.run_id]
            with contextlib.suppress(StoreError):
                await execute(self.pool, "unwatch_run", {"run_id": sub.run_id, "watcher": self.watcher})

    def recheck(self, run_id: uuid.UUID) -> None:
        """Read the run's new events again, notified or not."""
        self._mark(run_id)

    def _mark(self, run_id: uuid.UUID) -> None:
        if run_id in self.subs:
            self.dirty.add(run_id)
            self.wake.set()

    # ------------------------------------------------------------ notifications and the fan-out

    def _mark_note(self, payload: str) -> None:
        if payload == EVERY_RUN:
            for run_id in list(self.subs):
                self._mark(run_id)
            return
        with contextlib.suppress(ValueError):
            self._mark(uuid.UUID(payload))

    async def _bridge(self) -> None:
        """Redis mode: take the cluster's bridge role when free, then LISTEN and hand each
        notification to `_publish`. Losing the connection gives the role up (the lock is the
        session's); a standby retries every BRIDGE_RETRY_SECS."""
        while True:
            try:
                with translated():
                    conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                    async with conn:
                        while True:
                            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (BRIDGE_LOCK,))
                            row = await cur.fetchone()
                            if row is not None and row[0]:
                                break
                            await asyncio.sleep(BRIDGE_RETRY_SECS)
                        await conn.execute(q("listen_run_events"))
                        self.bridging = True
                        log.info("run streams: this process bridges PostgreSQL notifications to Redis")
                        self._post(EVERY_RUN)
                        async for note in conn.notifies():
                            self._post(note.payload)
            except (StoreError, OSError) as exc:
                log.warning("run stream bridge lost its connection (%s); reconnecting", exc)
            finally:
                self.bridging = False
            await asyncio.sleep(RECONNECT_SECS)

    def _post(self, payload: str) -> None:
        self.outbox.add(payload)
        self.outbox_ready.set()

    async def _publish(self) -> None:
        """Everything the bridge heard since the last round, in one pipeline (repeats merged)."""
        from redis.exceptions import RedisError

        while True:
            await self.outbox_ready.wait()
            self.outbox_ready.clear()
            batch, self.outbox = self.outbox, set()
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for payload in batch:
                        pipe.publish(REDIS_CHANNEL, payload)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("run stream publish failed (%s); every stream re-reads when Redis is back", exc)
                self.outbox.add(EVERY_RUN)
                await asyncio.sleep(RECONNECT_SECS)
                self.outbox_ready.set()

    async def _subscribe_redis(self) -> None:
        """Redis mode: the notifications of every bridge, for this process's streams."""
        from redis.exceptions import RedisError

        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(REDIS_CHANNEL)
                    self._mark_note(EVERY_RUN)  # whatever was published while we were away
                    async for msg in pubsub.listen():
                        if msg.get("type") == "message":
                            data = msg["data"]
                            self._mark_note(data.decode() if isinstance(data, bytes) else str(data))
                finally:
                    await pubsub.aclose()
            except (RedisError, OSError) as exc:
                log.warning("run stream subscription lost (%s); resubscribing", exc)
            await asyncio.sleep(RECONNECT_SECS)

    async def _deliver(self) -> None:
        """Read the new events of every run marked dirty, in one statement, and hand them out."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            runs, self.dirty = list(self.dirty), set()
            runs = [r for r in runs if r in self.subs]
            if not runs:
                continue
            cursors = [min(s.after_id for s in self.subs[r]) for r in runs]
            try:
                rows = await fetch_all(self.pool, "run_events_after", {"run_ids": runs, "after_ids": cursors})
            except StoreError as exc:
                log.warning("run stream read failed (%s); retrying", exc)
                self.dirty.update(runs)
                await asyncio.sleep(RECONNECT_SECS)
                self.wake.set()
                continue
            for row in rows:
                for sub in self.subs.get(row["run_id"], ()):
                    if row["id"] > sub.after_id:
                        sub.after_id = row["id"]
                        sub.queue.put_nowait(row)
            counts: dict[uuid.UUID, int] = {}
            for row in rows:
                counts[row["run_id"]] = counts.get(row["run_id"], 0) + 1
            full = {r for r, n in counts.items() if n >= 500}  # a page was full: read on
            for run_id in full:
                self._mark(run_id)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECS)
            params = {"watcher": self.watcher, "run_ids": list(self.subs), "ttl": WATCH_TTL_SECS}
            try:
                await execute(self.pool, "refresh_watches", params)
            except StoreError as exc:
                log.warning("run stream watch refresh failed: %s", exc)


async def events(hub: StreamHub, sub: Subscriber, keepalive: float, max_secs: float) -> AsyncIterator[Row | None]:
    """The subscriber's events; None when a keep-alive is due; ends at `max_secs`."""
    deadline = time.monotonic() + max_secs
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            yield await asyncio.wait_for(sub.queue.get(), timeout=min(keepalive, left))
        except TimeoutError:
            if deadline - time.monotonic() <= 0:
                return
            yield None


async def serve(
    request: web.Request, hub: StreamHub, run: Row, after_id: int | None, settings: Any
) -> web.StreamResponse:
    """Stream one run until its terminal status change, the connection's end or its time limit.
    A run that has ended with nothing left to tell this client is a 410, as at connect."""
    sub = await hub.subscribe(run["id"], after_id)
    try:
        latest = await fetch_one(hub.pool, "get_run", {"id": run["id"]})
        if latest is None or (fsm.is_terminal(latest["status"]) and sub.start_id >= sub.last_id):
            raise ApiError(410, "run already in terminal state")
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        if request.method == "HEAD":
            # headers only: aiohttp would send the frames even to a HEAD, whose client reads no
            # body, so on a keep-alive connection they would read as the next answer
            return resp
        await resp.write(b": connected\n\n")
        # the race below is closed within a second of connecting, then each quiet interval
        early = asyncio.get_running_loop().call_later(RECHECK_SECS, hub.recheck, run["id"])
        try:
            keepalive, longest = settings.sse_keepalive_interval_secs, settings.sse_max_conn_duration_secs
            async for event in events(hub, sub, keepalive, longest):
                if event is None:
                    # a transition that began before this stream's watch was visible NOTIFYs no one:
                    # each quiet interval the run's events are read again, so none is missed for long
                    hub.recheck(run["id"])
                    await resp.write(b": keepalive\n\n")
                    continue
                msg, last = frame(run, event)
                await resp.write(b"id: %d\ndata: %s\n\n" % (event["id"], payloads.dumps(msg)))
                if last:
                    break
        except ConnectionResetError:  # the client left: the end of its stream, not an error
            log.debug("run stream %s: client gone", run["id"])
        finally:
            early.cancel()
        return resp
    finally:
        await hub.unsubscribe(sub)
