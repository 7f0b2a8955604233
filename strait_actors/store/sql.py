"""Named SQL: every statement lives in `queries.sql` under `-- name: x` with a one-line purpose."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from strait_actors import payloads
from strait_actors.store import transitions
from strait_actors.store.errors import translated

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


def parse(text: str) -> dict[str, str]:
    """Split a named-query file into {name: statement}; the purpose comment stays with the SQL.
    A statement of DERIVED is its base with marked sections replaced by its own (`derive`)."""
    parts = _NAME.split(text)
    bodies: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in bodies:
            raise ValueError(f"query {name!r} defined twice")
        bodies[name] = body
    queries = {name: _TRAILING_COMMENTS.sub("", body.strip()).rstrip(";") for name, body in bodies.items()}
    for name, base in DERIVED.items():
        if name in queries:
            if base not in queries:
                raise ValueError(f"query {name!r} is derived from {base!r}, which is not defined")
            queries[name] = derive(queries[base], bodies[name])
    return queries


# {statement: the statement it is derived from}
DERIVED = {"claim_runs_plain": "claim_runs", "insert_runs_unkeyed": "insert_runs"}
_SECTION = re.compile(r"^[ \t]*-- \{(\w+)\b[^\n]*\n.*?^[ \t]*-- \1\}[ \t]*(?:\n|\Z)", re.M | re.S)


def derive(base: str, replacements: str) -> str:
    """`base` with each of its marked sections (the lines from `-- {NAME` to `-- NAME}`) that
    `replacements` marks too replaced by that one; what `replacements` has outside them is dropped."""
    new = {m.group(1): m.group(0).rstrip() + "\n" for m in _SECTION.finditer(replacements)}
    if not new:
        raise ValueError("no marked section to replace")
    marked = [m.group(1) for m in _SECTION.finditer(base)]
    for section in new:
        if marked.count(section) != 1:
            raise ValueError(f"section {section!r} is marked {marked.count(section)} times in its base statement")
    return _SECTION.sub(lambda m: new.get(m.group(1), m.group(0)), base)


# comment lines after a statement (the next section's heading) are not part of it
_TRAILING_COMMENTS = re.compile(r"(?:\n[ \t]*(?:--[^\n]*)?[ \t]*)+\Z")


def load(text: str) -> dict[str, str]:
    """Named statements with the transition seam's macros expanded (see `transitions`)."""
    return {name: transitions.expand(name, body) for name, body in parse(text).items()}


@cache
def queries() -> dict[str, str]:
    return load(resources.files("strait_actors.store").joinpath("queries.sql").read_text())


def q(name: str) -> str:
    return queries()[name]


# psycopg converts a statement's named parameters (`%(x)s`) to `$n` by parsing its text, and caches
# the result only for texts of at most 4096 bytes (psycopg discussion 628: long texts are mostly
# generated ones, seldom seen twice). Ours are the fixed texts of queries.sql, reused on every call:
# the claim (16 KB), the outcome write and the SDK plane's finish (9 KB each) were parsed again each
# time, 30-40 us of CPU per execution (the worker's, the API's for the finish), the claim's on the
# way from trigger to dispatch.
# The module constant is private to psycopg (pinned below 4); tests/test_queue.py checks that the
# claim's text is still converted once.
CACHED_STATEMENT_BYTES = 65536
if getattr(psycopg._queries, "MAX_CACHED_STATEMENT_LENGTH", CACHED_STATEMENT_BYTES) < CACHED_STATEMENT_BYTES:
    psycopg._queries.MAX_CACHED_STATEMENT_LENGTH = CACHED_STATEMENT_BYTES


def kept_cursor(conn: Any, query: str, row_factory: Any = None) -> Any:
    """The connection's own cursor for this statement, kept for its next executions. psycopg keeps a
    cursor's adapters (its parameters' dumpers, its columns' loaders) for as long as the cursor runs
    the same query object again (our named statements are one string each); a new cursor per
    execution looked them all up anew, 50-150 us of a trigger INSERT or a claim of one run. Kept on
    the connection object, so it goes with it. A connection serves one caller at a time (a pool's
    checkout, an actor's own), and so does its cursor. It holds its last result until its next
    execution."""
    kept: dict[tuple[int, Any], Any] = conn.__dict__.setdefault("_strait_cursors", {})
    key = (id(query), row_factory)
    cur = kept.get(key)
    if cur is None or cur.closed:
        cur = kept[key] = conn.cursor(row_factory=row_factory) if row_factory else conn.cursor()
    return cur


# ----------------------------------------------------------------- running named queries (async)

# orjson for every json/jsonb value psycopg handles (5-10x faster than the stdlib), with the stdlib
# behind it for what orjson cannot hold (a payload's integer beyond 64 bits)
set_json_dumps(payloads.dumps)
set_json_loads(payloads.loads)

Row = dict[str, Any]
T = TypeVar("T")


class _EverySecond(AttemptWithBackoff):
    """psycopg_pool doubles its delay between reconnection attempts (1, 2, 4, 8 s ...), so after an
    outage the pool came back up to half the outage late; one attempt a second (+-10 %) instead."""

    DELAY_BACKOFF = 1.0


class Pool(AsyncConnectionPool):
    """The API's pool: back within a second of the database's return."""

    async def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        await super()._add_connection(attempt or _EverySecond(timeout=self.reconnect_timeout), growing)


def count(conn: psycopg.Connection, name: str, params: dict[str, Any] | None = None) -> int:
    """Run a sweep statement on a worker's own connection; the `n` it reports (rows it changed)."""
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q(name), params).fetchone()
    return int(row["n"]) if row else 0


def make_pool(dsn: str, size: int) -> AsyncConnectionPool:
    return Pool(dsn, min_size=1, max_size=size, open=False, kwargs={"autocommit": True, "row_factory": dict_row})


async def _fetch(pool: AsyncConnectionPool, name: str, params: dict[str, Any], many: bool) -> Any:
    with translated():
        async with pool.connection() as conn:
            cur = await conn.execute(q(name), params)
            return await (cur.fetchall() if many else cur.fetchone())


async def fetch_one(pool: AsyncConnectionPool, name: str, params: dict[str, Any]) -> Row | None:
    """One row as a dict (the pool's connections use dict rows); driver errors come out translated."""
    row: Any = await released_on_cancel(_fetch(pool, name, params, many=False))
    return row  # type: ignore[no-any-return]


async def fetch_all(pool: AsyncConnectionPool, name: str, params: dict[str, Any]) -> list[Row]:
    rows: Any = await released_on_cancel(_fetch(pool, name, params, many=True))
    return rows  # type: ignore[no-any-return]


async def _run(pool: AsyncConnectionPool, name: str, params: dict[str, Any]) -> None:
    with translated():
        async with pool.connection() as conn:
            await conn.execute(q(name), params)


async def execute(pool: AsyncConnectionPool, name: str, params: dict[str, Any]) -> None:
    """A statement that returns no rows."""
    await released_on_cancel(_run(pool, name, params))


# Statements whose caller gave up, still being cancelled on the server: held here until they end.
_abandoned: set[asyncio.Task[Any]] = set()


async def released_on_cancel(statement: Coroutine[Any, Any, T]) -> T:
    """Await a statement in a task of its own, so that a caller who gives up (REQUEST_TIMEOUT) is
    released at once. psycopg answers a cancellation by cancelling the query on the server and
    waiting for that, up to 10 s when the server does not answer (frozen, or unreachable): that
    now happens in the background, which still holds the connection until it is done."""
    task = asyncio.ensure_future(statement)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        raise


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the caller that wanted the answer is gone


async def _ping(pool: AsyncConnectionPool, timeout: float) -> None:
    async with pool.connection(timeout=timeout) as conn:
        await conn.execute(q("ping"))


async def ping(pool: AsyncConnectionPool, timeout: float) -> bool:
    """Can a connection be had and used within `timeout`? (health checks: a frozen server is down)"""
    try:
        async with asyncio.timeout(timeout):
            await released_on_cancel(_ping(pool, timeout))
    except (psycopg.Error, PoolTimeout, OSError, TimeoutError):
        return False
    return True
