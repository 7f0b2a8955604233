"""What an API process keeps of the configuration (jobs, project quotas, API keys), kept until
PostgreSQL says it changed.

Every write to those tables NOTIFYs `strait_config` with the row's key (migration 0019), whatever
statement made it and through whichever API process or host. Each API process's `ConfigFeed`
LISTENs there and makes its caches forget the key, so a change made anywhere is seen by every
process's next request once the notification arrives (milliseconds), and a job triggered now and
then is not read again every second.

A copy is kept that way only while the feed can vouch for it:
- The feed NOTIFYs itself a beat every BEAT_SECS, on its own connection. Notifications arrive in
  commit order, so the beat's return proves that every change committed before it was sent has
  been heard (and forgotten). A copy is vouched for while the last beat that came back was sent less
  than TRUST_SECS ago. A listener that stops hearing (its connection lost, or silently dead) leaves
  every copy to its TTL within TRUST_SECS, which is never longer than the TTLs themselves: no
  failure makes a copy staler than the caches' TTLs alone allowed.
- A read that a change may have raced (the feed's generation moved while it was on its way) is
  kept for the TTL only: its notification may have been forgotten before the read's answer was
  stored.
- On every (re)connect the feed forgets everything, since it could not hear while it was away.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "strait_config"
APPLICATION = "strait listener"  # the connection's application_name
BEAT_SECS = 0.5  # a beat costs the API process about 1 ms of CPU (this VM, idle): 2 a second
TRUST_SECS = 1.0
RECONNECT_SECS = 1.0
BEAT = "beat"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ConfigFeed:
    """The API process's listener: `strait_config` and the caches it keeps coherent, and the
    channels others add (`also`: the run streams')."""

    def __init__(self, dsn: str | None = None) -> None:
        self.dsn = dsn
        self.generation = 0  # moves on every change heard and every (re)connect
        self.vouched_at = float("-inf")  # monotonic send time of the latest beat that came back
        self.caches: dict[str, list[Cache[object, object]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.backend_pid: int | None = None  # the listening connection's PostgreSQL backend
        # other channels heard on the same connection (one listener a process: each listening
        # backend costs PostgreSQL work at every notifying commit, whatever its channels)
        self.others: dict[str, tuple[Callable[[str], None], Callable[[], None]]] = {}

    def watching(self, now: float) -> bool:
        """Does the feed vouch, at `now`, for copies kept since a read it did not see raced?"""
        return now - self.vouched_at < TRUST_SECS

    def also(self, channel: str, heard: Callable[[str], None], connected: Callable[[], None]) -> None:
        """Hear `channel` too (before `start`): `heard` gets each payload, `connected` is called on
        every (re)connect, once LISTENing (what was notified while away was not heard)."""
        self.others[channel] = (heard, connected)

    def register(self, table: str, cache: Cache[K, V]) -> None:
        self.caches.setdefault(table, []).append(cache)  # type: ignore[arg-type]

    def heard(self, payload: str) -> None:
        """A change of `table:key`: every cache of the table forgets the key."""
        table, _, key = payload.partition(":")
        self.generation += 1
        for cache in self.caches.get(table, ()):
            cache.forget_text(key)

    def reset(self) -> None:
        """Forget everything (a (re)connect: what changed while we were away was not heard)."""
        self.generation += 1
        for caches in self.caches.values():
            for cache in caches:
                cache.clear()

    async def start(self) -> None:
        if self.dsn is not None:
            self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self) -> None:
        """LISTEN, beat and hear, reconnecting after a loss."""
        assert self.dsn is not None
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=5, application_name=APPLICATION
                )
                async with conn:
                    for channel in (CHANNEL, *self.others):
                        await conn.execute(f"LISTEN {channel}")
                    self.reset()
                    for _, connected in self.others.values():
                        connected()
                    await self._hear(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("config feed lost its connection (%s); caches fall back to their TTLs", exc)
            except Exception:  # a bug here must not end coherence for the process's lifetime
                log.exception("config feed failed; caches fall back to their TTLs")
            self.vouched_at = float("-inf")
            self.reset()
            await asyncio.sleep(RECONNECT_SECS)

    async def _hear(self, conn: psycopg.AsyncConnection[object]) -> None:
        me = self.backend_pid = conn.info.backend_pid
        beats: collections.deque[float] = collections.deque()  # send times of beats on their way
        while True:
            beats.append(time.monotonic())
            async with asyncio.timeout(TRUST_SECS * 5):
                await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, BEAT))
            async for note in conn.notifies(timeout=BEAT_SECS):
                if note.channel != CHANNEL:
                    self.others[note.channel][0](note.payload)
                    continue
                if note.payload == BEAT:
                    if note.pid == me and beats:
                        self.vouched_at = beats.popleft()
                    continue
                self.heard(note.payload)
            if len(beats) > TRUST_SECS * 5 / BEAT_SECS:
                raise TimeoutError("the feed's own beats do not come back")


class Cache(Generic[K, V]):
    """Copies by key, each kept for `ttl`, and for as long as the feed vouches for it (see the
    module doc); the least recently used go first past `size`."""

    def __init__(
        self,
        feed: ConfigFeed | None,
        table: str,
        ttl: float,
        parse: Callable[[str], K],
        size: int = 10000,
    ) -> None:
        self.feed = feed if feed is not None else ConfigFeed()
        self.ttl = ttl
        self.parse = parse
        self.size = size
        # key -> (until, vouched, value): `vouched` copies outlive `until` while the feed watches
        self.rows: collections.OrderedDict[K, tuple[float, bool, V]] = collections.OrderedDict()
        self.feed.register(table, self)

    def peek(self, key: K) -> tuple[bool, V | None]:
        """(True, value) for a copy still good, else (False, None)."""
        hit = self.rows.get(key)
        if hit is None:
            return False, None
        now = time.monotonic()
        if now < hit[0] or (hit[1] and self.feed.watching(now)):
            self.rows.move_to_end(key)
            return True, hit[2]
        return False, None

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The kept copy, else `load`'s answer (kept)."""
        found, value = self.peek(key)
        if found:
            return value  # type: ignore[return-value]  # a kept None is a value
        return await self.load(key, load)

    async def load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """Read the key (after `peek` missed) and keep the answer, vouched for unless a change raced it."""
        generation = self.feed.generation
        value = await load()
        now = time.monotonic()
        self.rows[key] = (now + self.ttl, self.feed.generation == generation and self.feed.watching(now), value)
        self.rows.move_to_end(key)
        while len(self.rows) > self.size:
            self.rows.popitem(last=False)
        return value

    def put(self, key: K, update: Callable[[V], V]) -> None:
        """Change a kept copy in place (keeping its terms), if there is one."""
        hit = self.rows.get(key)
        if hit is not None:
            self.rows[key] = (hit[0], hit[1], update(hit[2]))

    def forget(self, key: K) -> None:
        self.rows.pop(key, None)

    def forget_text(self, text: str) -> None:
        try:
            key = self.parse(text)
        except ValueError:
            self.clear()
            return
        self.rows.pop(key, None)

    def clear(self) -> None:
        self.rows.clear()
