"""Identifiers minted by the server (api.md §0.3): UUIDv7 ids, `ver_` version ids, API keys."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
import uuid

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def uuid7() -> uuid.UUID:
    """A UUIDv7: 48-bit Unix milliseconds, then random bits (time-ordered, index-friendly)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


def uuid7_floor(unix_secs: float) -> uuid.UUID:
    """The smallest UUIDv7 of that instant: every id made before it sorts below it."""
    ms = max(0, int(unix_secs * 1000)) & 0xFFFF_FFFF_FFFF
    return uuid.UUID(int=ms << 80 | 0x7 << 76 | 0x2 << 62)


def new_id() -> str:
    return str(uuid7())


def parse_uuid(text: str) -> uuid.UUID | None:
    """A path id as a UUID, or None when it cannot be one (the caller answers 404)."""
    try:
        return uuid.UUID(text)
    except (ValueError, TypeError):
        return None


def version_id() -> str:
    return "ver_" + "".join(secrets.choice(_ALPHABET) for _ in range(12))


def api_key() -> str:
    return "strait_" + secrets.token_hex(32)


def hash_key(key: str) -> str:
    # surrogateescape: a header with non-UTF-8 bytes hashes (to no key) instead of raising
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
