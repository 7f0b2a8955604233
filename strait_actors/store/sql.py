"""Named SQL: every statement lives in `queries.sql` under `-- name: x` with a one-line purpose."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from strait_actors import payloads
from strait_actors.store import transitions
from strait_actors.store.errors import translated

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


def parse(text: str) -> dict[str, str]:
    """Split a named-query file into {name: statement}; the purpose comment stays with the SQL."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def load(text: str) -> dict[str, str]:
    """Named statements with the transition seam's macros expanded (see `transitions`)."""
    return {name: transitions.expand(name, body) for name, body in parse(text).items()}


@cache
def queries() -> dict[str, str]:
    return load(resources.files("strait_actors.store").joinpath("queries.sql").read_text())


def q(name: str) -> str:
    return queries()[name]


# ----------------------------------------------------------------- running named queries (async)

# orjson for every json/jsonb value psycopg handles (5-10x faster than the stdlib), with the stdlib
# behind it for what orjson cannot hold (a payload's integer beyond 64 bits)
set_json_dumps(payloads.dumps)
set_json_loads(payloads.loads)

Row = dict[str, Any]


def make_pool(dsn: str, size: int) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        dsn, min_size=1, max_size=size, open=False, kwargs={"autocommit": True, "row_factory": dict_row}
    )


async def fetch_one(pool: AsyncConnectionPool, name: str, params: dict[str, Any]) -> Row | None:
    """One row as a dict (the pool's connections use dict rows); driver errors come out translated."""
    with translated():
        async with pool.connection() as conn:
            cur = await conn.execute(q(name), params)
            row: Any = await cur.fetchone()
            return row  # type: ignore[no-any-return]


async def fetch_all(pool: AsyncConnectionPool, name: str, params: dict[str, Any]) -> list[Row]:
    with translated():
        async with pool.connection() as conn:
            cur = await conn.execute(q(name), params)
            rows: Any = await cur.fetchall()
            return rows  # type: ignore[no-any-return]


async def ping(pool: AsyncConnectionPool, timeout: float) -> bool:
    """Can a connection be had and used within `timeout`? (health checks)"""
    try:
        async with pool.connection(timeout=timeout) as conn:
            await conn.execute(q("ping"))
    except (psycopg.Error, PoolTimeout, OSError):
        return False
    return True
