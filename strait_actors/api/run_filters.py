"""The filters of `GET /v1/runs` (api.md §4.4), one table: the handler reads the query by it, the
OpenAPI document describes the parameters from it, and the API fuzzer draws values by it (a filter
added here is read, documented and fuzzed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from multidict import MultiMapping

from strait_actors import fsm
from strait_actors.errors import bad_request
from strait_actors.ids import parse_uuid

Kind = Literal["status", "statuses", "uuid", "text", "json"]


@dataclass(frozen=True, slots=True)
class RunFilter:
    """One query parameter. Kinds: `status`, one or comma-separated run statuses; `statuses`, the
    same repeated, and also as `<name>[]`; `uuid`; `text`, matched as given; `json`, a JSON value."""

    kind: Kind
    key: str = ""  # the store's filter it fills (store.runs.list_runs), when not its name
    description: str = ""


RUN_FILTERS: Final[dict[str, RunFilter]] = {
    "status": RunFilter("status", key="statuses"),
    "statuses": RunFilter("statuses"),
    "job_id": RunFilter("uuid"),
    "batch_id": RunFilter("uuid"),
    "triggered_by": RunFilter("text"),
    "execution_mode": RunFilter("text"),
    "error_class": RunFilter("text"),
    "tag_key": RunFilter("text"),
    "tag_value": RunFilter("text"),
    "metadata_key": RunFilter("text", key="meta_key"),
    "metadata_value": RunFilter("text", key="meta_value"),
    "payload_contains": RunFilter("json", description="a JSON value the run's payload contains (jsonb @>)"),
}

_STATUS: Final[dict[str, Any]] = {"type": "string", "enum": sorted(fsm.ALL)}
_SCHEMAS: Final[dict[Kind, dict[str, Any]]] = {
    "status": _STATUS,
    "statuses": {"type": "array", "items": _STATUS},
    "uuid": {"type": "string"},
    "text": {"type": "string"},
    "json": {"type": "string"},
}


def query_schemas() -> tuple[tuple[str, dict[str, Any]], ...]:
    """Each filter's JSON Schema, for the OpenAPI document."""
    return tuple(
        (name, {**_SCHEMAS[f.kind], **({"description": f.description} if f.description else {})})
        for name, f in RUN_FILTERS.items()
    )


def _statuses(qs: MultiMapping[str], name: str, kind: Kind) -> list[str]:
    raw = qs.getall(name, []) + qs.getall(f"{name}[]", []) if kind == "statuses" else [qs.get(name)]
    wanted = [s for part in raw if part is not None for s in part.split(",") if s]
    for s in wanted:
        if s not in fsm.ALL:
            raise bad_request("status is invalid")
    return wanted


def _uuid(qs: MultiMapping[str], name: str) -> Any:
    raw = qs.get(name)
    if raw is None:
        return None
    value = parse_uuid(raw)
    if value is None:
        raise bad_request(f"{name} is invalid")
    return value


def _json(qs: MultiMapping[str], name: str) -> str | None:
    raw = qs.get(name)
    if raw is None:
        return None
    try:
        return orjson.dumps(orjson.loads(raw)).decode()
    except orjson.JSONDecodeError:
        raise bad_request(f"{name} must be valid JSON") from None
    except orjson.JSONEncodeError:
        raise bad_request(f"{name} is too large or nested too deeply") from None


_READ: Final[dict[Kind, Callable[[MultiMapping[str], str], Any]]] = {
    "uuid": _uuid,
    "text": lambda qs, name: qs.get(name),
    "json": _json,
}
# a JSON value is judged before the other filters (which of two bad filters a 400 names)
_JUDGED: Final = sorted(RUN_FILTERS.items(), key=lambda item: item[1].kind != "json")


def filters(qs: MultiMapping[str]) -> dict[str, Any]:
    """The store's filters from a `GET /v1/runs` query (absent ones None); 400 for a bad one. The
    statuses of several filters make one list."""
    if qs.get("tag_key") and qs.get("metadata_key"):
        raise bad_request("tag and metadata filters cannot be combined")
    if qs.get("tag_value") is not None and not qs.get("tag_key"):
        raise bad_request("tag_value requires tag_key")
    out: dict[str, Any] = {}
    for name, f in _JUDGED:
        key = f.key or name
        if f.kind in ("status", "statuses"):
            out[key] = [*(out.get(key) or []), *_statuses(qs, name, f.kind)] or None
        else:
            out[key] = _READ[f.kind](qs, name)
    return out
