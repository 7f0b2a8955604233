"""Payloads: the JSON PostgreSQL can hold, and the canonical form a run is stored and hashed in.

Shared by everything that creates runs (the API, and actors such as the cron Scheduler).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from typing import Any, Final

import orjson

_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class PayloadError(ValueError):
    """A payload that has no canonical form (the API answers 400 with the message)."""


def clean_str(s: str) -> str:
    # Postgres text/jsonb reject NUL and lone surrogates (§0.3); Go maps the latter to U+FFFD.
    if "\x00" in s:
        s = s.replace("\x00", "")
    return _SURROGATE.sub("\ufffd", s)


def clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_str(value)
    if isinstance(value, dict):
        return {clean_str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def _dump_clean(payload: Any) -> bytes:
    clean = clean_json(payload)
    try:
        return orjson.dumps(clean, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: int beyond 64 bits or nesting beyond 255
        return json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_payload(payload: Any) -> tuple[bytes, str]:
    """Compact JSON with sorted keys (§4.3.6) and its lowercase hex SHA-256; None → {}."""
    raw: bytes | None = None
    # a lone surrogate, an int beyond 64 bits or nesting beyond 255 takes the slow path below
    with contextlib.suppress(TypeError):
        raw = orjson.dumps({} if payload is None else payload, option=orjson.OPT_SORT_KEYS)
    if raw is None or b"\\u0000" in raw:  # orjson escapes every NUL, so this finds them all
        try:
            raw = _dump_clean({} if payload is None else payload)
        except RecursionError:
            raise PayloadError("payload is nested too deeply") from None
    return raw, hashlib.sha256(raw).hexdigest()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """JSON as the database gives it back: orjson, or the standard parser for what orjson refuses
    (integers beyond 64 bits, which a payload may hold exactly)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data) if isinstance(data, memoryview | bytearray) else data)


def dumps(value: Any) -> bytes:
    """Compact JSON: orjson, or the standard encoder for integers beyond 64 bits or deep nesting."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
