"""Pure request validation for jobs and triggers (api.md §0.3, §2.3, §4.3).

No I/O: handlers parse the body, call these, then touch the database. Status split,
as in Go: struct-level rules (required, JSON type, length, min/max, one-of) → 422
`validation_failed` with `details` `<field>: failed on '<rule>'` (all fields at once);
semantic rules (URLs, cron, timezone, schemas, tags, retry delays, exclusivity) → 400
with one message. Trigger bodies fail fast with a field-specific message; bulk items
always fail with 400 `invalid trigger item for item <n>: <message>`.
"""

from __future__ import annotations

import json
import math
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from croniter import croniter

from strait_actors import schemas
from strait_actors.errors import ApiError, bad_request, unprocessable
from strait_actors.model import RunRequest
from strait_actors.payloads import clean_json, clean_str
from strait_actors.windows import MAX_BATCH_ITEMS

UrlCheck = Callable[[str], None]

INT32_MAX: Final = 2**31 - 1  # integer columns are 32-bit; larger values would 500 in the DB
MAX_TIMEOUT_SECS: Final = 86_400
MAX_WINDOW_SECS: Final = 30 * 86_400  # rate-limit and dedup windows look at runs: not past their retention
MAX_TTL_SECS: Final = 2_592_000  # 30 days
MAX_KEY_LEN: Final = 256  # trigger keys (concurrency/debounce/batch/idempotency)
MAX_SCHEDULE_AHEAD: Final = timedelta(days=30)
SCHEDULE_SLACK: Final = timedelta(seconds=1)  # client/server clock skew tolerated for "now"
EMPTY_PAYLOAD_HASH: Final = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

SLUG_PATTERN: Final = "[a-z0-9][a-z0-9._-]*"  # fullmatch; the OpenAPI document anchors it
_SLUG_RE: Final = re.compile(SLUG_PATTERN)
_URL_BAD_CHARS_RE: Final = re.compile(r"[\x00-\x20\x7f]")
_RFC3339_RE: Final = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)\Z")


@dataclass(frozen=True, slots=True)
class JobDefaults:
    max_attempts: int = 3
    timeout_secs: int = 300


@dataclass(frozen=True, slots=True)
class _Str:
    max_len: int | None = None
    min_len: int = 0
    choices: frozenset[str] = frozenset()
    slug: bool = False


@dataclass(frozen=True, slots=True)
class _Int:
    lo: int = 0
    hi: int | None = INT32_MAX  # None: the upper bound is a 400 rule checked later


# Other kinds are plain names ("bool", "str_map", "int_list", "json"): only their JSON type is a
# 422 rule; their content rules (tags, delays, schemas) are 400s checked afterwards.
_Spec = _Str | _Int | str
_URL = _Str()
_SECRET = _Str(min_len=16, max_len=4096)
_NONNEG = _Int()

# Order = order of `details`; required fields first so `{}` reads naturally.
_JOB_FIELDS: Final[dict[str, _Spec]] = {
    "project_id": _Str(),
    "name": _Str(max_len=255),
    "slug": _Str(max_len=128, slug=True),
    "group_id": _Str(),
    "description": _Str(max_len=2000),
    "environment_id": _Str(),
    "cron": _Str(),
    "timezone": _Str(),
    "execution_window_cron": _Str(),
    "endpoint_url": _URL,
    "fallback_endpoint_url": _URL,
    "webhook_url": _URL,
    "endpoint_signing_secret": _SECRET,
    "webhook_secret": _SECRET,
    "execution_mode": _Str(choices=frozenset({"http", "worker"})),
    "queue_name": _Str(),
    "version_policy": _Str(choices=frozenset({"pin", "latest", "minor"})),
    "cron_overlap_policy": _Str(choices=frozenset({"allow", "skip", "cancel_running"})),
    "retry_strategy": _Str(choices=frozenset({"exponential", "linear", "fixed", "custom"})),
    "retry_delays_secs": "int_list",
    "max_attempts": _Int(1, 100),
    "timeout_secs": _Int(1, None),
    "retry_priority_boost": _Int(0, 10),
    "poison_pill_threshold": _Int(1),
    "max_concurrency": _NONNEG,
    "max_concurrency_per_key": _NONNEG,
    "rate_limit_max": _NONNEG,
    "rate_limit_window_secs": _NONNEG,
    "rate_limit_keys": "rate_keys",
    "dedup_window_secs": _NONNEG,
    "run_ttl_secs": _Int(0, MAX_TTL_SECS),
    "debounce_window_secs": _NONNEG,
    "batch_window_secs": _NONNEG,
    "batch_max_size": _Int(0, None),  # its upper bound is a 400 (MAX_BATCH_ITEMS)
    "enabled": "bool",
    "tags": "str_map",
    "default_run_metadata": "str_map",
    "payload_schema": "json",
    "result_schema": "json",
    "on_complete_trigger_job": _Str(),
    "on_complete_trigger_workflow": _Str(),
    "on_failure_trigger_job": _Str(),
    "on_failure_trigger_workflow": _Str(),
    "on_complete_payload_mapping": "json",
    "on_failure_payload_mapping": "json",
}
_REQUIRED: Final = ("project_id", "name", "slug")
_URL_FIELDS: Final = ("endpoint_url", "fallback_endpoint_url", "webhook_url")
_SECRET_FIELDS: Final = ("webhook_secret", "endpoint_signing_secret")
# Column defaults; an empty string on these resets to the default rather than NULL (NOT NULL columns).
_STR_DEFAULTS: Final = {
    "queue_name": "default",
    "execution_mode": "http",
    "version_policy": "pin",
    "cron_overlap_policy": "allow",
}
# Go's `omitempty` treats 0 as "not sent" on create, so 0 means "use the default" there.
_ZERO_IS_DEFAULT: Final = frozenset({"max_attempts", "timeout_secs"})
# A patch cannot move a job between projects (§4.3.4) but may flag a compatible change.
_PATCH_FIELDS: Final[dict[str, _Spec]] = {
    **{k: v for k, v in _JOB_FIELDS.items() if k != "project_id"},
    "backwards_compatible": "bool",
}


class _Rule(Exception):
    """One failed struct rule (args[0]); becomes a `<field>: failed on '<rule>'` detail."""


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass; JSON true is not a number


def _str_map(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _Rule("type")
    return {clean_str(k): clean_str(v) for k, v in raw.items()}


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("invalid request body: expected a JSON object")
    return body


def _coerce_str(spec: _Str, raw: Any) -> str | None:
    if not isinstance(raw, str):
        raise _Rule("type")
    value = clean_str(raw)
    if value == "":
        return None  # empty = unset on create, "clear" on patch
    if len(value) < spec.min_len:
        raise _Rule("min")
    if spec.max_len is not None and len(value) > spec.max_len:
        raise _Rule("max")
    if spec.choices and value not in spec.choices:
        raise _Rule("oneof")
    if spec.slug and not _SLUG_RE.fullmatch(value):
        raise _Rule("slug")
    return value


def _coerce(spec: _Spec, raw: Any) -> Any:
    if isinstance(spec, _Str):
        return _coerce_str(spec, raw)
    if isinstance(spec, _Int):
        if not _is_int(raw):
            raise _Rule("type")
        if raw < spec.lo or (spec.hi is not None and raw > spec.hi):
            raise _Rule("min" if raw < spec.lo else "max")
        return raw
    if spec == "bool" and not isinstance(raw, bool):
        raise _Rule("type")
    if spec == "str_map":
        return _str_map(raw)
    if spec == "rate_keys":
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise _Rule("type")
        return clean_json(raw)
    if spec == "int_list":
        if not isinstance(raw, list) or not all(_is_int(x) for x in raw):
            raise _Rule("type")
        return list(raw) or None  # [] = no custom delays
    return clean_json(raw)  # bool, or any JSON (schemas, payload mappings)


def _collect(body: Mapping[str, Any], *, patch: bool) -> dict[str, Any]:
    """Every known, non-null field coerced; all struct failures raised together as one 422."""
    out: dict[str, Any] = {}
    details: list[str] = []
    for name, spec in (_PATCH_FIELDS if patch else _JOB_FIELDS).items():
        raw = body.get(name)
        if raw is None or (not patch and name in _ZERO_IS_DEFAULT and _is_int(raw) and raw == 0):
            # null = absent, as Go's pointer/omitempty fields read it
            if not patch and name in _REQUIRED:
                details.append(f"{name}: failed on 'required'")
            continue
        try:
            value = _coerce(spec, raw)
        except _Rule as exc:
            details.append(f"{name}: failed on '{exc.args[0]}'")
            continue
        if value is None and name in _REQUIRED:
            details.append(f"{name}: failed on 'required'")  # cannot be blank, nor cleared
            continue
        out[name] = _STR_DEFAULTS.get(name) if value is None else value
    if details:
        raise unprocessable("validation failed", details)
    return out


def _pop_signing_secret(out: dict[str, Any]) -> tuple[bool, str | None]:
    """webhook_secret wins over endpoint_signing_secret (§4.3.1); neither is ever returned."""
    present = any(name in out for name in _SECRET_FIELDS)
    webhook, endpoint = (out.pop(name, None) for name in _SECRET_FIELDS)
    return present, webhook or endpoint


MAX_URL_LEN: Final = 2048


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_URL_LEN:
        return f"must be at most {MAX_URL_LEN} characters"
    if _URL_BAD_CHARS_RE.search(url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            return "scheme must be http or https"
        if not parts.hostname:
            return "missing host"
        parts.port  # noqa: B018 — raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        return str(exc) or "malformed URL"
    return None


def _check_url(name: str, url: str, url_check: UrlCheck | None) -> None:
    problem = _url_problem(url)
    if problem is None and url_check is not None:
        try:
            url_check(url)  # the caller's SSRF policy (private hosts, ports, TLS)
        except ValueError as exc:
            problem = str(exc) or "not allowed"
    if problem is not None:
        raise bad_request(f"invalid {name}: {problem}")


def check_url(name: str, url: str, url_check: UrlCheck | None) -> None:
    """A URL other than a job's own fields (an environment's ENDPOINT_URL): the same rules, 400."""
    _check_url(name, url, url_check)


def storable(text: str) -> bool:
    """PostgreSQL text holds it: no NUL, and no lone surrogate (JSON escapes can make one)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def pause_reason(body: Mapping[str, Any]) -> str | None:
    """A pause's optional `{"reason": str}` (jobs, groups, projects): at most 1000 characters."""
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 1000 or not storable(reason)):
        raise bad_request("reason must be a string of at most 1000 characters (no NUL, valid UTF-8)")
    return reason


def _check_cron(name: str, expr: str) -> None:
    # croniter also takes 6/7-field (seconds/year) forms; the contract's crons have 5 fields.
    shaped = expr.startswith("@") or len(expr.split()) == 5
    if not (shaped and croniter.is_valid(expr)):
        raise bad_request(f"invalid cron expression: {name} {json.dumps(expr, ensure_ascii=False)}")


def _check_timezone(tz: str) -> None:
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a directory such as "America"; ValueError: absolute or "../" keys.
        raise bad_request(f"invalid timezone: {json.dumps(tz, ensure_ascii=False)}") from None


def _check_schema(name: str, schema: Any) -> None:
    try:
        schemas.check(schema)
    except schemas.SchemaInvalid as exc:
        raise bad_request(f"invalid {name}: {exc}") from None


MAX_TAGS: Final = 20
MAX_TAG_KEY: Final = 64
MAX_TAG_VALUE: Final = 256


def _check_tags(tags: Mapping[str, str] | None) -> None:
    if not tags:
        return
    if len(tags) > MAX_TAGS:
        raise bad_request(f"tags must have at most {MAX_TAGS} keys")
    for key, value in tags.items():
        if not 1 <= len(key) <= MAX_TAG_KEY:
            raise bad_request(f"tag keys must be 1-{MAX_TAG_KEY} characters")
        if len(value) > MAX_TAG_VALUE:
            quoted = json.dumps(key, ensure_ascii=False)
            raise bad_request(f"tag value for key {quoted} must be at most {MAX_TAG_VALUE} characters")


MAX_RETRY_DELAYS: Final = 100


def _check_retry_delays(delays: list[int] | None) -> None:
    if delays is None:
        return
    if len(delays) > MAX_RETRY_DELAYS:
        raise bad_request(f"retry_delays_secs must have at most {MAX_RETRY_DELAYS} entries")
    if not all(0 < d <= INT32_MAX for d in delays):
        raise bad_request(f"retry_delays_secs must contain positive integers <= {INT32_MAX}")


MAX_RATE_KEYS: Final = 20


def _check_rate_keys(keys: list[dict[str, Any]] | None) -> None:
    """Named rate-limit keys: `[{"key", "max", "window_secs"}]`, each key once."""
    if keys is None:
        return
    if len(keys) > MAX_RATE_KEYS:
        raise bad_request(f"rate_limit_keys must have at most {MAX_RATE_KEYS} entries")
    seen: set[str] = set()
    for i, entry in enumerate(keys):
        where = f"rate_limit_keys[{i}]"
        unknown = sorted(set(entry) - {"key", "max", "window_secs"})
        if unknown:
            raise bad_request(f"{where}: unknown field {json.dumps(unknown[0], ensure_ascii=False)}")
        key = entry.get("key")
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or _URL_BAD_CHARS_RE.search(key):
            raise bad_request(f"{where}: key must be 1-128 characters without spaces or control characters")
        if key in seen:
            raise bad_request(f"{where}: key {json.dumps(key, ensure_ascii=False)} appears twice")
        seen.add(key)
        if not _is_int(entry.get("max")) or not 1 <= entry["max"] <= INT32_MAX:
            raise bad_request(f"{where}: max must be an integer from 1 to {INT32_MAX}")
        window = entry.get("window_secs")
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= MAX_WINDOW_SECS:
            raise bad_request(f"{where}: window_secs must be an integer from 1 to {MAX_WINDOW_SECS} (30 days)")


def _check_semantics(job: Mapping[str, Any], url_check: UrlCheck | None) -> None:
    """400 rules over whichever fields are present (create: all; patch: the sent ones)."""
    for name in _URL_FIELDS:
        if job.get(name) is not None:
            _check_url(name, job[name], url_check)
    if (job.get("timeout_secs") or 0) > MAX_TIMEOUT_SECS:
        raise bad_request(f"timeout_secs must be <= {MAX_TIMEOUT_SECS}")
    # engine.md §2.5: within run retention; a debounce or batch window as well (README)
    for name in ("rate_limit_window_secs", "dedup_window_secs", "debounce_window_secs", "batch_window_secs"):
        if (job.get(name) or 0) > MAX_WINDOW_SECS:
            raise bad_request(f"{name} must be <= {MAX_WINDOW_SECS} (30 days, the run retention)")
    if (job.get("batch_max_size") or 0) > MAX_BATCH_ITEMS:
        raise bad_request(f"batch_max_size must be <= {MAX_BATCH_ITEMS}")
    for name in ("cron", "execution_window_cron"):
        if job.get(name) is not None:
            _check_cron(name, job[name])
    if job.get("timezone") is not None:
        _check_timezone(job["timezone"])
    _check_retry_delays(job.get("retry_delays_secs"))
    _check_rate_keys(job.get("rate_limit_keys"))
    _check_tags(job.get("tags"))
    for name in ("payload_schema", "result_schema"):
        if job.get(name) is not None:
            _check_schema(name, job[name])


def _check_windows(job: Mapping[str, Any]) -> None:
    if (job.get("debounce_window_secs") or 0) > 0 and (job.get("batch_window_secs") or 0) > 0:
        raise bad_request("debounce_window_secs and batch_window_secs are mutually exclusive")


def check_job_invariants(job: Mapping[str, Any]) -> None:
    """Cross-field rules on a whole job; PATCH handlers must call it on the merged row."""
    _check_windows(job)
    if (job.get("execution_mode") or "http") == "http" and not job.get("endpoint_url"):
        raise bad_request("endpoint_url is required")


def validate_job_create(body: Any, *, defaults: JobDefaults, url_check: UrlCheck | None = None) -> dict[str, Any]:
    """POST /v1/jobs body → every `jobs` column the request controls, defaults applied."""
    out = _collect(_require_object(body), patch=False)
    _, out["signing_secret"] = _pop_signing_secret(out)
    filled: dict[str, Any] = {
        "max_attempts": defaults.max_attempts,
        "timeout_secs": defaults.timeout_secs,
        "retry_priority_boost": 1,
        "enabled": True,
        "tags": {},
        "default_run_metadata": {},
        "rate_limit_keys": [],
        **_STR_DEFAULTS,
    }
    for name in _JOB_FIELDS:
        if name not in _SECRET_FIELDS:
            out.setdefault(name, filled.get(name))
    _check_semantics(out, url_check)
    check_job_invariants(out)
    return out


def validate_job_patch(body: Any, *, url_check: UrlCheck | None = None) -> dict[str, Any]:
    """PATCH body → only the fields sent (empty string → None); project_id is ignored."""
    out = _collect(_require_object(body), patch=True)
    present, secret = _pop_signing_secret(out)
    if present:
        out["signing_secret"] = secret
    _check_semantics(out, url_check)
    # Only what the patch alone decides; the handler runs check_job_invariants on the merged row.
    _check_windows(out)
    if out.get("execution_mode") == "http" and "endpoint_url" in out and out["endpoint_url"] is None:
        raise bad_request("endpoint_url is required")
    return out


# A trigger body (§4.3.6) and a bulk item (§4.3.7), one field per RunRequest field: the bounds
# `_trigger` checks are these, and the OpenAPI document describes the body from this table.
_PRIORITY: Final = _Int(0, 10)
_TTL: Final = _Int(0, MAX_TTL_SECS)
_TRIGGER_KEY_LEN: Final = MAX_KEY_LEN
_TRIGGER_KEY: Final = _Str(max_len=_TRIGGER_KEY_LEN)
TRIGGER_FIELDS: Final[dict[str, _Spec]] = {
    "payload": "json",
    "tags": "str_map",
    "scheduled_at": "rfc3339",
    "priority": _PRIORITY,
    "dry_run": "bool",
    "ttl_secs": _TTL,
    "concurrency_key": _TRIGGER_KEY,
    "debounce_key": _TRIGGER_KEY,
    "batch_key": _TRIGGER_KEY,
    "idempotency_key": _TRIGGER_KEY,
    "metadata": "str_map",
}


def _type_error(name: str, kind: str) -> ApiError:
    return unprocessable(f"{name} must be {kind}", [f"{name}: failed on 'type'"])


def _trigger_int(body: Mapping[str, Any], name: str, spec: _Int) -> int | None:
    raw = body.get(name)
    if raw is None:
        return None
    if not _is_int(raw):
        raise _type_error(name, "an integer")
    hi = INT32_MAX if spec.hi is None else spec.hi
    if not spec.lo <= raw <= hi:
        rule = "min" if raw < spec.lo else "max"
        raise unprocessable(f"{name} must be between {spec.lo} and {hi}", [f"{name}: failed on '{rule}'"])
    return int(raw)


def _trigger_key(body: Mapping[str, Any], name: str) -> str | None:
    raw = body.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _type_error(name, "a string")
    value = clean_str(raw)
    if len(value) > _TRIGGER_KEY_LEN:
        message = f"{name} must be at most {MAX_KEY_LEN} characters"
        raise unprocessable(message, [f"{name}: failed on 'max'"])
    return value or None


def _trigger_map(body: Mapping[str, Any], name: str) -> dict[str, str]:
    raw = body.get(name)
    try:
        return {} if raw is None else _str_map(raw)
    except _Rule:
        raise _type_error(name, "an object of string values") from None


def _parse_rfc3339(text: str) -> datetime:
    if not _RFC3339_RE.match(text):
        raise ValueError(text)  # fromisoformat alone would also take dates without time or zone
    # 3.11's fromisoformat truncates Go's nanoseconds to µs and rejects bad days/offsets
    return datetime.fromisoformat(text.upper()).astimezone(UTC)


def _scheduled_at(raw: Any, now: datetime) -> datetime | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _type_error("scheduled_at", "a string")
    try:
        when = _parse_rfc3339(raw)
    except ValueError:
        raise bad_request("scheduled_at must be a valid RFC3339 timestamp") from None
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    if when < now - SCHEDULE_SLACK:
        raise bad_request("scheduled_at must not be in the past")
    if when > now + MAX_SCHEDULE_AHEAD:
        raise bad_request("scheduled_at must be at most 30 days in the future")
    return when


def _trigger(body: Any, now: datetime) -> RunRequest:
    body = _require_object(body)
    dry_run = body.get("dry_run")
    if dry_run is not None and not isinstance(dry_run, bool):
        raise _type_error("dry_run", "a boolean")
    tags = _trigger_map(body, "tags")
    _check_tags(tags)
    payload = body.get("payload")
    return RunRequest(
        payload={} if payload is None else payload,
        tags=tags,
        scheduled_at=_scheduled_at(body.get("scheduled_at"), now),
        priority=_trigger_int(body, "priority", _PRIORITY) or 0,
        dry_run=bool(dry_run),
        ttl_secs=_trigger_int(body, "ttl_secs", _TTL),
        concurrency_key=_trigger_key(body, "concurrency_key"),
        debounce_key=_trigger_key(body, "debounce_key"),
        batch_key=_trigger_key(body, "batch_key"),
        idempotency_key=_trigger_key(body, "idempotency_key"),
        metadata=_trigger_map(body, "metadata"),
    )


def validate_trigger(body: Any, *, now: datetime, index: int | None = None) -> RunRequest:
    """Trigger body (§4.3.6) or, with `index`, one bulk item (§4.3.7: always 400, prefixed)."""
    if index is None:
        return _trigger(body, now)
    try:
        return _trigger(body, now)
    except ApiError as exc:
        message = f"invalid trigger item for item {index}: {exc.message}"
        raise ApiError(400, message, details=exc.details) from None


def validate_bulk(body: Any, *, max_items: int) -> list[dict[str, Any]]:
    """`{"items": [...]}` → the raw item objects; each then goes through validate_trigger."""
    items = _require_object(body).get("items")
    if not isinstance(items, list) or not items:
        raise bad_request("items is required")
    if len(items) > max_items:
        raise bad_request(f"too many items: {len(items)} > {max_items}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_request(f"invalid trigger item for item {index}: item must be a JSON object")
    return items


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # only the rare failing case pays for finding the key
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                quoted = json.dumps(clean_str(key), ensure_ascii=False)  # the message is JSON too
                raise bad_request(f"invalid request body: duplicate key {quoted}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise bad_request(f"invalid request body: {name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: a double cannot hold it, and nothing could render it back
        raise bad_request(f"invalid request body: number {text[:40]} is out of range")
    return value


# one decoder for every body (json.loads with hooks builds a new one per call)
_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object, parse_constant=_reject_constant, parse_float=_finite_float
)


def parse_json_body(raw: bytes) -> Any:
    """Request body → JSON value; empty → {} (§0.3); malformed or duplicate keys → 400."""
    if not raw.strip():
        return {}
    try:
        return _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RecursionError:
        raise bad_request("invalid request body: nesting too deep") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, ints over the digit limit
        raise bad_request(f"invalid request body: {exc}") from None


MAX_EVENT_KEY_BYTES: Final = 512
MAX_WAIT_SECS: Final = 2_592_000  # 30 days
DEFAULT_WAIT_SECS: Final = 3600


def event_key(raw: Any) -> str:
    """An event key (engine.md §6): 1 to 512 bytes of UTF-8, no control character below 0x20."""
    if not isinstance(raw, str) or not raw:
        raise bad_request("event_key is required and must be a non-empty string")
    try:
        size = len(raw.encode())
    except UnicodeEncodeError:
        raise bad_request("event_key must be valid UTF-8") from None
    if size > MAX_EVENT_KEY_BYTES:
        raise bad_request(f"event_key is longer than {MAX_EVENT_KEY_BYTES} bytes")
    if any(ch < " " for ch in raw):
        raise bad_request("event_key must not contain control characters")
    return raw


def wait_timeout(raw: Any) -> int:
    """A wait's timeout in seconds: default 3600, 1 to 30 days."""
    if raw is None:
        return DEFAULT_WAIT_SECS
    if not _is_int(raw) or not 1 <= raw <= MAX_WAIT_SECS:
        raise bad_request(f"timeout_secs must be an integer between 1 and {MAX_WAIT_SECS}")
    return int(raw)


MAX_JSON_DEPTH: Final = 200


def json_value(value: Any) -> Any:
    """A JSON value of a body field as PostgreSQL can hold it (no NUL, no lone surrogate), nested at
    most MAX_JSON_DEPTH deep: 400 otherwise (the parser takes deeper bodies; nothing stored needs them)."""
    if _depth_over(value, MAX_JSON_DEPTH):
        raise bad_request(f"invalid request body: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return clean_json(value)


def _depth_over(value: Any, limit: int) -> bool:
    """Iterative (a recursive walk would itself run out of stack on the values it must refuse)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# ----------------------------------------------------------------- the same tables as JSON Schema
# api/openapi.py documents the job and trigger bodies from the tables above, so a field added to
# a table (or a bound changed) shows up in /openapi.json without a second edit. The 422 rules are
# the specs themselves; the 400 rules checked afterwards (URL length, the timeout and window caps,
# tags, retry delays, named rate-limit keys) are added here, from the constants the checks use.

_TAGS_SCHEMA: Final = {
    "type": "object",
    "maxProperties": MAX_TAGS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_TAG_KEY},
    "additionalProperties": {"type": "string", "maxLength": MAX_TAG_VALUE},
}
_SEMANTIC: Final[dict[str, dict[str, Any]]] = {
    **{name: {"maxLength": MAX_URL_LEN} for name in _URL_FIELDS},
    "timeout_secs": {"maximum": MAX_TIMEOUT_SECS},
    **{
        name: {"maximum": MAX_WINDOW_SECS}
        for name in ("rate_limit_window_secs", "dedup_window_secs", "debounce_window_secs", "batch_window_secs")
    },
    "batch_max_size": {"maximum": MAX_BATCH_ITEMS},
    "retry_delays_secs": {
        "maxItems": MAX_RETRY_DELAYS,
        "items": {"type": "integer", "minimum": 1, "maximum": INT32_MAX},
    },
    "rate_limit_keys": {"maxItems": MAX_RATE_KEYS},
    "tags": _TAGS_SCHEMA,
}
_KIND_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "bool": {"type": "boolean"},
    "str_map": {"type": "object", "additionalProperties": {"type": "string"}},
    "int_list": {"type": "array", "items": {"type": "integer"}},
    "rate_keys": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "key": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\x00-\\x20\\x7f]+$"},
                "max": {"type": "integer", "minimum": 1, "maximum": INT32_MAX},
                "window_secs": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_SECS},
            },
            "required": ["key", "max", "window_secs"],
            "additionalProperties": False,
        },
    },
    "rfc3339": {"type": "string", "format": "date-time"},
    "json": {},
}


def spec_schema(name: str, spec: _Spec, *, nullable: bool = True) -> dict[str, Any]:
    """One field of a table as JSON Schema; `nullable`: a null is read as absent (Go's pointers)."""
    out: dict[str, Any]
    if isinstance(spec, _Str):
        out = {"type": "string"}
        if spec.min_len:
            out["minLength"] = spec.min_len
        if spec.max_len is not None:
            out["maxLength"] = spec.max_len
        if spec.choices:
            out["enum"] = sorted(spec.choices)
        if spec.slug:
            out["pattern"] = f"^{SLUG_PATTERN}$"
    elif isinstance(spec, _Int):
        out = {"type": "integer", "minimum": spec.lo}
        if spec.hi is not None:
            out["maximum"] = spec.hi
    else:
        out = dict(_KIND_SCHEMAS[spec])
    out.update(_SEMANTIC.get(name, {}))
    if nullable and "enum" in out:
        out["enum"] = [*out["enum"], None]
    elif nullable and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def job_body_schema(*, patch: bool) -> dict[str, Any]:
    """POST /v1/jobs (patch=False) or PATCH /v1/jobs/{id} body. An empty string clears a field (or
    means unset), so only the required fields of a create must be non-empty."""
    table = _PATCH_FIELDS if patch else _JOB_FIELDS
    props = {name: spec_schema(name, spec) for name, spec in table.items()}
    if patch:
        return {"type": "object", "properties": props}
    for name in _REQUIRED:
        props[name] = {**spec_schema(name, table[name], nullable=False), "minLength": 1}
    return {"type": "object", "properties": props, "required": list(_REQUIRED)}


def trigger_body_schema() -> dict[str, Any]:
    """A trigger body or bulk item: every field optional, unknown ones ignored (api.md §0.3)."""
    return {"type": "object", "properties": {name: spec_schema(name, spec) for name, spec in TRIGGER_FIELDS.items()}}
