"""Table-driven tests for strait_actors.api.validation (api.md §2.3, §3.2, §4.3)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from strait_actors.api.validation import (
    EMPTY_PAYLOAD_HASH,
    JobDefaults,
    check_job_invariants,
    parse_json_body,
    validate_bulk,
    validate_job_create,
    validate_job_patch,
    validate_trigger,
)
from strait_actors.errors import ApiError
from strait_actors.model import RunRequest
from strait_actors.payloads import PayloadError, canonical_payload

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
BASE: dict[str, Any] = {
    "project_id": "proj",
    "name": "Send email",
    "slug": "send-email",
    "endpoint_url": "https://example.com/hook",
}
SECRET_A = "a" * 16
SECRET_B = "b" * 32


def expect_error(fn: Callable[[], object], status: int, code: str, message: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn()
    err = info.value
    assert (err.status, err.code) == (status, code), err.message
    assert message in err.message, err.message
    return err


def create(**overrides: Any) -> dict[str, Any]:
    return validate_job_create({**BASE, **overrides}, defaults=JobDefaults())


# ---- parse_json_body -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", {}),
        (b"  \n\t", {}),
        (b'{"a": {"b": [1, 2.5, null, true]}}', {"a": {"b": [1, 2.5, None, True]}}),
        (b"[1, 2]", [1, 2]),
        (b'"x"', "x"),
        ('{"é": "ü"}'.encode(), {"é": "ü"}),
        (b'{"a": 1, "b": {"a": 2}}', {"a": 1, "b": {"a": 2}}),  # same key in different objects is fine
    ],
)
def test_parse_json_body_accepts(raw: bytes, expected: Any) -> None:
    assert parse_json_body(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": 1, "a": 2}', 'invalid request body: duplicate key "a"'),
        (b'{"x": [{"k": 1, "k": 1}]}', 'invalid request body: duplicate key "k"'),
        (b'{"a": NaN}', "invalid request body: NaN is not valid JSON"),
        (b"[Infinity]", "invalid request body: Infinity is not valid JSON"),
        (b"[-Infinity]", "invalid request body: -Infinity is not valid JSON"),
        (b"{", "invalid request body: "),
        (b'{"a": 1,}', "invalid request body: "),
        (b"\xff\xfe{", "invalid request body: "),
        (b"[" * 100_000 + b"]" * 100_000, "invalid request body: "),
    ],
)
def test_parse_json_body_rejects(raw: bytes, message: str) -> None:
    expect_error(lambda: parse_json_body(raw), 400, "bad_request", message)


# ---- canonical_payload ---------------------------------------------------------------------


def test_canonical_payload_empty_hash() -> None:
    assert canonical_payload({}) == (b"{}", EMPTY_PAYLOAD_HASH)
    assert canonical_payload(None) == (b"{}", EMPTY_PAYLOAD_HASH)
    assert EMPTY_PAYLOAD_HASH == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"b": 1, "a": {"d": [3, {"z": 1, "y": 2}], "c": None}}, b'{"a":{"c":null,"d":[3,{"y":2,"z":1}]},"b":1}'),
        ([3, "x", True], b'[3,"x",true]'),
        ("text", b'"text"'),
        (0, b"0"),
        ({"name": "é✓"}, '{"name":"é✓"}'.encode()),  # non-ASCII stays raw UTF-8
        ({"a\x00b": "c\x00d", "l": ["\x00"]}, b'{"ab":"cd","l":[""]}'),  # NULs stripped, keys too
        ({"big": 2**70, "s": "x\x00"}, b'{"big":1180591620717411303424,"s":"x"}'),  # > 64-bit int
        ({"s": "a\ud800b"}, '{"s":"a\ufffdb"}'.encode()),  # lone surrogate → U+FFFD
        ({"s": "a\\u0000"}, b'{"s":"a\\\\u0000"}'),  # a literal backslash-u text is kept
    ],
)
def test_canonical_payload_bytes(payload: Any, expected: bytes) -> None:
    raw, digest = canonical_payload(payload)
    assert raw == expected
    assert digest == hashlib.sha256(expected).hexdigest()


def test_canonical_payload_is_key_order_independent() -> None:
    a = parse_json_body(b'{"x": 1, "y": {"q": 2, "p": 3}}')
    b = parse_json_body(b'{"y": {"p": 3, "q": 2}, "x": 1}')
    assert canonical_payload(a) == canonical_payload(b)


def test_canonical_payload_deep_nesting_beyond_orjson_limit() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    raw, _ = canonical_payload(deep)
    assert raw == b"[" * 300 + b"1" + b"]" * 300


def test_canonical_payload_too_deep_is_refused() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = {"k": deep}
    with pytest.raises(PayloadError, match="payload is nested too deeply"):
        canonical_payload(deep)  # the trigger API answers it with 400 bad_request


# ---- validate_job_create: good input -------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("queue_name", "default"),
        ("execution_mode", "http"),
        ("enabled", True),
        ("max_attempts", 3),
        ("timeout_secs", 300),
        ("retry_priority_boost", 1),
        ("version_policy", "pin"),
        ("cron_overlap_policy", "allow"),
        ("tags", {}),
        ("default_run_metadata", {}),
        ("retry_delays_secs", None),
        ("signing_secret", None),
        ("description", None),
        ("cron", None),
        ("max_concurrency", None),
        ("payload_schema", None),
        ("webhook_url", None),
    ],
)
def test_create_defaults(key: str, value: Any) -> None:
    assert create()[key] == value


def test_create_returns_every_column_and_no_raw_secret() -> None:
    job = create(webhook_secret=SECRET_A, unknown_field={"ignored": True})
    assert {"project_id", "name", "slug", "endpoint_url", "signing_secret"} <= job.keys()
    assert "webhook_secret" not in job and "endpoint_signing_secret" not in job
    assert "unknown_field" not in job


def test_create_custom_defaults_and_zero_means_default() -> None:
    job = validate_job_create(
        {**BASE, "max_attempts": 0, "timeout_secs": 0}, defaults=JobDefaults(max_attempts=7, timeout_secs=60)
    )
    assert (job["max_attempts"], job["timeout_secs"]) == (7, 60)


def test_create_full_body_normalised() -> None:
    job = create(
        description="d",
        group_id="g",
        environment_id="env",
        cron="*/5 * * * *",
        timezone="Europe/Paris",
        execution_window_cron="0 9-17 * * MON-FRI",
        fallback_endpoint_url="http://localhost:9000/fb",
        webhook_url="https://hooks.example.com/x",
        max_attempts=100,
        timeout_secs=86400,
        max_concurrency=0,
        max_concurrency_per_key=2,
        rate_limit_max=10,
        rate_limit_window_secs=60,
        dedup_window_secs=30,
        run_ttl_secs=2592000,
        retry_strategy="custom",
        retry_delays_secs=[1, 5, 30],
        retry_priority_boost=0,
        version_policy="minor",
        cron_overlap_policy="cancel_running",
        debounce_window_secs=5,
        batch_window_secs=0,
        batch_max_size=10,
        execution_mode="http",
        enabled=False,
        queue_name="fast",
        poison_pill_threshold=3,
        tags={"team": "core"},
        default_run_metadata={"k": "v"},
        payload_schema={"type": "object", "required": ["to"]},
        result_schema={"type": "string"},
        on_complete_trigger_job="j2",
        on_complete_payload_mapping={"a": "b"},
    )
    assert job["retry_delays_secs"] == [1, 5, 30]
    assert job["tags"] == {"team": "core"} and job["default_run_metadata"] == {"k": "v"}
    assert job["enabled"] is False and job["retry_priority_boost"] == 0 and job["queue_name"] == "fast"
    assert job["payload_schema"] == {"type": "object", "required": ["to"]}
    assert job["timezone"] == "Europe/Paris" and job["run_ttl_secs"] == 2592000


@pytest.mark.parametrize(
    ("secrets", "expected"),
    [
        ({"webhook_secret": SECRET_A, "endpoint_signing_secret": SECRET_B}, SECRET_A),
        ({"endpoint_signing_secret": SECRET_B}, SECRET_B),
        ({"webhook_secret": SECRET_A}, SECRET_A),
        ({"webhook_secret": "", "endpoint_signing_secret": SECRET_B}, SECRET_B),
        ({}, None),
    ],
)
def test_create_signing_secret(secrets: dict[str, str], expected: str | None) -> None:
    assert create(**secrets)["signing_secret"] == expected


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        ({"name": "a\x00b"}, "name", "ab"),
        ({"description": "\x00"}, "description", None),
        ({"tags": {"k\x00": "v\x00"}}, "tags", {"k": "v"}),
        ({"payload_schema": {"description": "x\x00y"}}, "payload_schema", {"description": "xy"}),
        ({"description": ""}, "description", None),
        ({"queue_name": ""}, "queue_name", "default"),
        ({"execution_mode": ""}, "execution_mode", "http"),
        ({"max_concurrency": None}, "max_concurrency", None),
        ({"retry_delays_secs": []}, "retry_delays_secs", None),
        ({"slug": "a.b_c-9"}, "slug", "a.b_c-9"),
        ({"cron": "@daily"}, "cron", "@daily"),
        ({"execution_mode": "worker", "endpoint_url": None}, "endpoint_url", None),
        (
            {"payload_schema": {"$schema": "https://example.com/unknown", "type": "object"}},
            "payload_schema",
            {"$schema": "https://example.com/unknown", "type": "object"},
        ),
    ],
)
def test_create_normalises(overrides: dict[str, Any], key: str, expected: Any) -> None:
    assert create(**overrides)[key] == expected


# ---- validate_job_create: 422 struct rules -------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"project_id": None}, "project_id: failed on 'required'"),
        ({"name": ""}, "name: failed on 'required'"),
        ({"slug": "\x00"}, "slug: failed on 'required'"),
        ({"name": 5}, "name: failed on 'type'"),
        ({"max_attempts": "x"}, "max_attempts: failed on 'type'"),
        ({"max_attempts": 2.0}, "max_attempts: failed on 'type'"),
        ({"max_attempts": True}, "max_attempts: failed on 'type'"),
        ({"tags": []}, "tags: failed on 'type'"),
        ({"tags": {"a": 1}}, "tags: failed on 'type'"),
        ({"default_run_metadata": {"a": None}}, "default_run_metadata: failed on 'type'"),
        ({"enabled": "yes"}, "enabled: failed on 'type'"),
        ({"retry_delays_secs": "1,2"}, "retry_delays_secs: failed on 'type'"),
        ({"retry_delays_secs": [1, "2"]}, "retry_delays_secs: failed on 'type'"),
        ({"name": "n" * 256}, "name: failed on 'max'"),
        ({"slug": "s" * 129}, "slug: failed on 'max'"),
        ({"slug": "Send-Email"}, "slug: failed on 'slug'"),
        ({"slug": "send email"}, "slug: failed on 'slug'"),
        ({"slug": "-lead"}, "slug: failed on 'slug'"),
        ({"description": "d" * 2001}, "description: failed on 'max'"),
        ({"max_attempts": 101}, "max_attempts: failed on 'max'"),
        ({"max_attempts": -1}, "max_attempts: failed on 'min'"),
        ({"timeout_secs": -5}, "timeout_secs: failed on 'min'"),
        ({"retry_priority_boost": 11}, "retry_priority_boost: failed on 'max'"),
        ({"retry_priority_boost": -1}, "retry_priority_boost: failed on 'min'"),
        ({"retry_strategy": "random"}, "retry_strategy: failed on 'oneof'"),
        ({"execution_mode": "lambda"}, "execution_mode: failed on 'oneof'"),
        ({"version_policy": "major"}, "version_policy: failed on 'oneof'"),
        ({"cron_overlap_policy": "queue"}, "cron_overlap_policy: failed on 'oneof'"),
        ({"webhook_secret": "short"}, "webhook_secret: failed on 'min'"),
        ({"endpoint_signing_secret": "x" * 4097}, "endpoint_signing_secret: failed on 'max'"),
        ({"run_ttl_secs": 2592001}, "run_ttl_secs: failed on 'max'"),
        ({"poison_pill_threshold": 0}, "poison_pill_threshold: failed on 'min'"),
        ({"max_concurrency": 2**31}, "max_concurrency: failed on 'max'"),
        *[
            ({name: -1}, f"{name}: failed on 'min'")
            for name in (
                "max_concurrency",
                "max_concurrency_per_key",
                "rate_limit_max",
                "rate_limit_window_secs",
                "dedup_window_secs",
                "run_ttl_secs",
                "debounce_window_secs",
                "batch_window_secs",
                "batch_max_size",
            )
        ],
    ],
)
def test_create_422(overrides: dict[str, Any], detail: str) -> None:
    err = expect_error(lambda: create(**overrides), 422, "validation_failed", "validation failed")
    assert err.details == [detail]


def test_create_422_collects_every_field_in_order() -> None:
    err = expect_error(lambda: validate_job_create({}, defaults=JobDefaults()), 422, "validation_failed", "")
    assert err.details == [
        "project_id: failed on 'required'",
        "name: failed on 'required'",
        "slug: failed on 'required'",
    ]
    bad = {"name": "", "max_attempts": "x", "tags": [], "enabled": "yes"}
    err = expect_error(lambda: create(**bad), 422, "validation_failed", "")
    assert err.details == [
        "name: failed on 'required'",
        "max_attempts: failed on 'type'",
        "enabled: failed on 'type'",
        "tags: failed on 'type'",
    ]


def test_create_422_wins_over_400() -> None:
    err = expect_error(lambda: create(name=None, cron="nope"), 422, "validation_failed", "")
    assert err.details == ["name: failed on 'required'"]


# ---- validate_job_create: 400 semantic rules -----------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"endpoint_url": None}, "endpoint_url is required"),
        ({"endpoint_url": ""}, "endpoint_url is required"),
        ({"execution_mode": "http", "endpoint_url": None}, "endpoint_url is required"),
        ({"endpoint_url": "ftp://example.com/x"}, "invalid endpoint_url: scheme must be http or https"),
        ({"endpoint_url": "example.com/x"}, "invalid endpoint_url: scheme must be http or https"),
        ({"endpoint_url": "http:///path"}, "invalid endpoint_url: missing host"),
        ({"endpoint_url": "http://exa mple.com"}, "invalid endpoint_url: must not contain spaces"),
        ({"endpoint_url": "http://example.com:99999/"}, "invalid endpoint_url: "),
        ({"endpoint_url": "http://example.com:abc/"}, "invalid endpoint_url: "),
        ({"endpoint_url": "http://[::1/"}, "invalid endpoint_url: "),
        ({"endpoint_url": "https://e.com/" + "x" * 2040}, "invalid endpoint_url: must be at most 2048 characters"),
        ({"fallback_endpoint_url": "nope"}, "invalid fallback_endpoint_url: scheme must be http or https"),
        ({"webhook_url": "mailto:x@y.z"}, "invalid webhook_url: scheme must be http or https"),
        ({"timeout_secs": 86401}, "timeout_secs must be <= 86400"),
        ({"timeout_secs": 10**12}, "timeout_secs must be <= 86400"),
        ({"rate_limit_window_secs": 2_592_001}, "rate_limit_window_secs must be <= 2592000"),
        ({"dedup_window_secs": 10**9}, "dedup_window_secs must be <= 2592000"),
        ({"debounce_window_secs": 5, "batch_window_secs": 5}, "mutually exclusive"),
        ({"cron": "61 * * * *"}, 'invalid cron expression: cron "61 * * * *"'),
        ({"cron": "0 0 * * * *"}, "invalid cron expression: cron"),  # 6 fields (seconds)
        ({"cron": "every day"}, "invalid cron expression: cron"),
        ({"execution_window_cron": "* *"}, 'invalid cron expression: execution_window_cron "* *"'),
        ({"timezone": "Mars/Base"}, 'invalid timezone: "Mars/Base"'),
        ({"timezone": "America"}, "invalid timezone"),
        ({"timezone": "../etc/passwd"}, "invalid timezone"),
        ({"timezone": "/etc/localtime"}, "invalid timezone"),
        ({"payload_schema": []}, "invalid payload_schema: must be a JSON object"),
        ({"payload_schema": "string"}, "invalid payload_schema: must be a JSON object"),
        ({"payload_schema": {"type": "strng"}}, "invalid payload_schema: "),
        ({"payload_schema": {"$schema": 5}}, "invalid payload_schema: $schema must be a string"),
        ({"result_schema": {"minLength": -1}}, "invalid result_schema: "),
        ({"result_schema": {"pattern": "("}}, "invalid result_schema: "),
        ({"retry_delays_secs": [1, 0]}, "retry_delays_secs must contain positive integers"),
        ({"retry_delays_secs": [-3]}, "retry_delays_secs must contain positive integers"),
        ({"retry_delays_secs": [2**31]}, "retry_delays_secs must contain positive integers"),
        ({"retry_delays_secs": [1] * 101}, "retry_delays_secs must have at most 100 entries"),
        ({"tags": {str(i): "v" for i in range(21)}}, "tags must have at most 20 keys"),
        ({"tags": {"": "v"}}, "tag keys must be 1-64 characters"),
        ({"tags": {"k" * 65: "v"}}, "tag keys must be 1-64 characters"),
        ({"tags": {"k": "v" * 257}}, 'tag value for key "k" must be at most 256 characters'),
    ],
)
def test_create_400(overrides: dict[str, Any], message: str) -> None:
    expect_error(lambda: create(**overrides), 400, "bad_request", message)


@pytest.mark.parametrize(
    "overrides",
    [
        {"timeout_secs": 86400},
        {"debounce_window_secs": 5, "batch_window_secs": 0},
        {"tags": {str(i): "v" * 256 for i in range(20)}},
        {"tags": {"k" * 64: ""}},
        {"retry_delays_secs": [1] * 100},
        {"endpoint_url": "http://localhost:8080/x?y=1#z"},
        {"endpoint_url": "https://e.com/" + "x" * 2034},
        {"timezone": "UTC"},
        {"payload_schema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}},
        {"payload_schema": {}},
    ],
)
def test_create_400_boundaries_pass(overrides: dict[str, Any]) -> None:
    create(**overrides)


def test_create_rejects_non_object_body() -> None:
    for body in ([], "x", None, 3):
        expect_error(
            lambda b=body: validate_job_create(b, defaults=JobDefaults()),
            400,
            "bad_request",
            "invalid request body: expected a JSON object",
        )


def test_create_url_check_hook() -> None:
    seen: list[str] = []

    def check(url: str) -> None:
        seen.append(url)
        if "10.0.0.1" in url:
            raise ValueError("private address not allowed")

    body = {**BASE, "fallback_endpoint_url": "http://fb.example.com", "webhook_url": "http://wh.example.com"}
    validate_job_create(body, defaults=JobDefaults(), url_check=check)
    assert seen == ["https://example.com/hook", "http://fb.example.com", "http://wh.example.com"]
    for name in ("endpoint_url", "fallback_endpoint_url", "webhook_url"):
        body = {**BASE, name: "http://10.0.0.1/"}
        expect_error(
            lambda b=body: validate_job_create(b, defaults=JobDefaults(), url_check=check),
            400,
            "bad_request",
            f"invalid {name}: private address not allowed",
        )
    seen.clear()
    body = {**BASE, "endpoint_url": "gopher://x"}
    expect_error(
        lambda: validate_job_create(body, defaults=JobDefaults(), url_check=check),
        400,
        "bad_request",
        "invalid endpoint_url: scheme",
    )
    assert seen == []  # syntax errors are reported before the SSRF hook runs


# ---- validate_job_patch --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, {}),
        ({"name": "New"}, {"name": "New"}),
        ({"project_id": "other", "name": "n"}, {"name": "n"}),
        ({"project_id": 5}, {}),  # ignored, so not even type-checked
        (
            {"description": "", "cron": "", "retry_strategy": ""},
            {"description": None, "cron": None, "retry_strategy": None},
        ),
        ({"execution_mode": "", "queue_name": ""}, {"execution_mode": "http", "queue_name": "default"}),
        ({"description": None, "max_attempts": None}, {}),  # null = not sent
        ({"max_attempts": 5, "enabled": False}, {"max_attempts": 5, "enabled": False}),
        ({"tags": {}}, {"tags": {}}),
        ({"webhook_secret": SECRET_A, "endpoint_signing_secret": SECRET_B}, {"signing_secret": SECRET_A}),
        ({"endpoint_signing_secret": SECRET_B}, {"signing_secret": SECRET_B}),
        ({"webhook_secret": ""}, {"signing_secret": None}),
        ({"backwards_compatible": True}, {"backwards_compatible": True}),
        ({"endpoint_url": ""}, {"endpoint_url": None}),  # merged row decides (check_job_invariants)
        ({"debounce_window_secs": 5}, {"debounce_window_secs": 5}),
        ({"name": "a\x00b", "unknown": 1}, {"name": "ab"}),
    ],
)
def test_patch_returns_only_present_fields(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert validate_job_patch(body) == expected


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"name": ""}, "name: failed on 'required'"),
        ({"slug": ""}, "slug: failed on 'required'"),
        ({"slug": "Bad Slug"}, "slug: failed on 'slug'"),
        ({"max_attempts": 0}, "max_attempts: failed on 'min'"),  # 0 is not "unset" on patch
        ({"timeout_secs": 0}, "timeout_secs: failed on 'min'"),
        ({"enabled": 1}, "enabled: failed on 'type'"),
        ({"backwards_compatible": "yes"}, "backwards_compatible: failed on 'type'"),
        ({"webhook_secret": "short"}, "webhook_secret: failed on 'min'"),
        ({"version_policy": "x"}, "version_policy: failed on 'oneof'"),
    ],
)
def test_patch_422(body: dict[str, Any], detail: str) -> None:
    err = expect_error(lambda: validate_job_patch(body), 422, "validation_failed", "validation failed")
    assert err.details == [detail]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"timeout_secs": 86401}, "timeout_secs must be <= 86400"),
        ({"cron": "bad"}, "invalid cron expression: cron"),
        ({"timezone": "Nowhere/Town"}, "invalid timezone"),
        ({"endpoint_url": "ftp://x"}, "invalid endpoint_url: scheme must be http or https"),
        ({"payload_schema": {"type": 5}}, "invalid payload_schema: "),
        ({"debounce_window_secs": 1, "batch_window_secs": 1}, "mutually exclusive"),
        ({"execution_mode": "http", "endpoint_url": ""}, "endpoint_url is required"),
        ({"tags": {"k": "v" * 300}}, "tag value for key"),
    ],
)
def test_patch_400(body: dict[str, Any], message: str) -> None:
    expect_error(lambda: validate_job_patch(body), 400, "bad_request", message)


def test_patch_422_collects_every_field() -> None:
    body = {"backwards_compatible": "yes", "name": "", "project_id": [], "tags": "x"}
    err = expect_error(lambda: validate_job_patch(body), 422, "validation_failed", "validation failed")
    assert err.details == [
        "name: failed on 'required'",
        "tags: failed on 'type'",
        "backwards_compatible: failed on 'type'",
    ]


def test_patch_url_check_hook() -> None:
    def deny(url: str) -> None:
        raise ValueError("port not allowed")

    expect_error(
        lambda: validate_job_patch({"webhook_url": "http://e.com:1234"}, url_check=deny),
        400,
        "bad_request",
        "invalid webhook_url: port not allowed",
    )
    assert validate_job_patch({"webhook_url": ""}, url_check=deny) == {"webhook_url": None}


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"execution_mode": "http", "endpoint_url": None}, "endpoint_url is required"),
        ({"endpoint_url": ""}, "endpoint_url is required"),
        ({"execution_mode": "worker", "debounce_window_secs": 1, "batch_window_secs": 2}, "mutually exclusive"),
    ],
)
def test_check_job_invariants(job: dict[str, Any], message: str) -> None:
    expect_error(lambda: check_job_invariants(job), 400, "bad_request", message)
    check_job_invariants({"execution_mode": "worker", "debounce_window_secs": 1, "batch_window_secs": 0})


# ---- validate_trigger ----------------------------------------------------------------------


def trigger(body: Any, index: int | None = None) -> RunRequest:
    return validate_trigger(body, now=NOW, index=index)


def test_trigger_empty_body_defaults() -> None:
    assert trigger({}) == RunRequest(
        payload={},
        tags={},
        scheduled_at=None,
        priority=0,
        dry_run=False,
        ttl_secs=None,
        concurrency_key=None,
        debounce_key=None,
        batch_key=None,
        idempotency_key=None,
        metadata={},
    )
    assert trigger({"payload": None}).payload == {}


def test_trigger_full_body() -> None:
    got = trigger(
        {
            "payload": [1, {"a": "b"}],
            "tags": {"env": "prod\x00"},
            "scheduled_at": "2026-06-02T12:00:00Z",
            "priority": 10,
            "dry_run": True,
            "ttl_secs": 0,
            "concurrency_key": "ck",
            "debounce_key": "dk",
            "batch_key": "bk",
            "idempotency_key": "ik\x00",
            "metadata": {"traceparent": "00-abc"},
            "extra": 1,
        }
    )
    assert got.payload == [1, {"a": "b"}] and got.tags == {"env": "prod"}
    assert got.scheduled_at == datetime(2026, 6, 2, 12, tzinfo=UTC)
    assert (got.priority, got.dry_run, got.ttl_secs) == (10, True, 0)
    keys = (got.concurrency_key, got.debounce_key, got.batch_key, got.idempotency_key)
    assert keys == ("ck", "dk", "bk", "ik")
    assert got.metadata == {"traceparent": "00-abc"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.priority = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-06-02T12:00:00Z", datetime(2026, 6, 2, 12, tzinfo=UTC)),
        ("2026-06-02T14:00:00+02:00", datetime(2026, 6, 2, 12, tzinfo=UTC)),
        ("2026-06-02t12:00:00.123456789z", datetime(2026, 6, 2, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-06-02 12:00:00.5-00:30", datetime(2026, 6, 2, 12, 30, 0, 500000, tzinfo=UTC)),
        ("2026-06-01T11:59:59.5Z", datetime(2026, 6, 1, 11, 59, 59, 500000, tzinfo=UTC)),  # slack
        ("2026-07-01T12:00:00Z", datetime(2026, 7, 1, 12, tzinfo=UTC)),  # exactly 30 days
    ],
)
def test_trigger_scheduled_at_accepts(text: str, expected: datetime) -> None:
    got = trigger({"scheduled_at": text}).scheduled_at
    assert got == expected and got is not None and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-06-01T11:59:58Z", "scheduled_at must not be in the past"),
        ("2026-07-01T12:00:01Z", "scheduled_at must be at most 30 days in the future"),
        ("2026-06-02", "scheduled_at must be a valid RFC3339 timestamp"),
        ("2026-06-02T12:00:00", "scheduled_at must be a valid RFC3339 timestamp"),  # no zone
        ("2026-02-30T12:00:00Z", "scheduled_at must be a valid RFC3339 timestamp"),
        ("2026-06-02T12:00:00+24:00", "scheduled_at must be a valid RFC3339 timestamp"),
        ("tomorrow", "scheduled_at must be a valid RFC3339 timestamp"),
        ("", "scheduled_at must be a valid RFC3339 timestamp"),
    ],
)
def test_trigger_scheduled_at_400(value: str, message: str) -> None:
    expect_error(lambda: trigger({"scheduled_at": value}), 400, "bad_request", message)


def test_trigger_naive_now_is_utc() -> None:
    got = validate_trigger({"scheduled_at": "2026-06-02T12:00:00Z"}, now=NOW.replace(tzinfo=None))
    assert got.scheduled_at == datetime(2026, 6, 2, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "message", "detail"),
    [
        ({"priority": 11}, "priority must be between 0 and 10", "priority: failed on 'max'"),
        ({"priority": -1}, "priority must be between 0 and 10", "priority: failed on 'min'"),
        ({"priority": "5"}, "priority must be an integer", "priority: failed on 'type'"),
        ({"priority": True}, "priority must be an integer", "priority: failed on 'type'"),
        ({"priority": 1.5}, "priority must be an integer", "priority: failed on 'type'"),
        ({"ttl_secs": 2592001}, "ttl_secs must be between 0 and 2592000", "ttl_secs: failed on 'max'"),
        ({"ttl_secs": -1}, "ttl_secs must be between 0 and 2592000", "ttl_secs: failed on 'min'"),
        ({"dry_run": "true"}, "dry_run must be a boolean", "dry_run: failed on 'type'"),
        ({"scheduled_at": 1700000000}, "scheduled_at must be a string", "scheduled_at: failed on 'type'"),
        ({"tags": ["a"]}, "tags must be an object of string values", "tags: failed on 'type'"),
        ({"metadata": {"a": 1}}, "metadata must be an object of string values", "metadata: failed on 'type'"),
        *[
            ({k: "x" * 257}, f"{k} must be at most 256 characters", f"{k}: failed on 'max'")
            for k in ("concurrency_key", "debounce_key", "batch_key", "idempotency_key")
        ],
        *[
            ({k: 7}, f"{k} must be a string", f"{k}: failed on 'type'")
            for k in ("concurrency_key", "debounce_key", "batch_key", "idempotency_key")
        ],
    ],
)
def test_trigger_422(body: dict[str, Any], message: str, detail: str) -> None:
    err = expect_error(lambda: trigger(body), 422, "validation_failed", message)
    assert err.message == message and err.details == [detail]


@pytest.mark.parametrize(
    ("body", "attr", "expected"),
    [
        ({"priority": 0}, "priority", 0),
        ({"priority": 10}, "priority", 10),
        ({"priority": None}, "priority", 0),
        ({"ttl_secs": 2592000}, "ttl_secs", 2592000),
        ({"ttl_secs": None}, "ttl_secs", None),
        ({"concurrency_key": "k" * 256}, "concurrency_key", "k" * 256),
        ({"concurrency_key": ""}, "concurrency_key", None),
        ({"debounce_key": "\x00"}, "debounce_key", None),
        ({"dry_run": None}, "dry_run", False),
        ({"tags": None}, "tags", {}),
    ],
)
def test_trigger_boundaries(body: dict[str, Any], attr: str, expected: Any) -> None:
    assert getattr(trigger(body), attr) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"tags": {str(i): "v" for i in range(21)}}, "tags must have at most 20 keys"),
        ({"tags": {"k": "v" * 257}}, "tag value for key"),
        ([1, 2], "invalid request body: expected a JSON object"),
    ],
)
def test_trigger_400(body: Any, message: str) -> None:
    expect_error(lambda: trigger(body), 400, "bad_request", message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"priority": 11}, "invalid trigger item for item 3: priority must be between 0 and 10"),
        ({"ttl_secs": "x"}, "invalid trigger item for item 3: ttl_secs must be an integer"),
        (
            {"scheduled_at": "2020-01-01T00:00:00Z"},
            "invalid trigger item for item 3: scheduled_at must not be in the past",
        ),
        ({"tags": {"": "v"}}, "invalid trigger item for item 3: tag keys must be 1-64 characters"),
        ("x", "invalid trigger item for item 3: invalid request body: expected a JSON object"),
    ],
)
def test_trigger_bulk_item_errors_are_400_with_index(body: Any, message: str) -> None:
    err = expect_error(lambda: trigger(body, index=3), 400, "bad_request", message)
    assert err.message == message


def test_trigger_bulk_item_keeps_details() -> None:
    err = expect_error(lambda: trigger({"priority": 11}, index=0), 400, "bad_request", "for item 0:")
    assert err.details == ["priority: failed on 'max'"]


def test_trigger_bulk_item_ok() -> None:
    assert trigger({"payload": {"n": 1}, "dry_run": True}, index=0).payload == {"n": 1}


# ---- validate_bulk -------------------------------------------------------------------------


def test_bulk_returns_items() -> None:
    items = [{"payload": {"n": i}} for i in range(3)]
    assert validate_bulk({"items": items}, max_items=3) == items


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "items is required"),
        ({"items": None}, "items is required"),
        ({"items": []}, "items is required"),
        ({"items": {"payload": 1}}, "items is required"),
        ({"items": [{}] * 4}, "too many items: 4 > 3"),
        ({"items": [{}, 5, {}]}, "invalid trigger item for item 1: item must be a JSON object"),
        ([{}], "invalid request body: expected a JSON object"),
    ],
)
def test_bulk_400(body: Any, message: str) -> None:
    err = expect_error(lambda: validate_bulk(body, max_items=3), 400, "bad_request", message)
    assert err.message == message


def test_bulk_round_trip_from_raw_json() -> None:
    raw = json.dumps({"items": [{"payload": {"b": 1, "a": 2}, "priority": 2}]}).encode()
    items = validate_bulk(parse_json_body(raw), max_items=500)
    got = [validate_trigger(item, now=NOW, index=i) for i, item in enumerate(items)]
    assert got[0].priority == 2
    assert canonical_payload(got[0].payload)[0] == b'{"a":2,"b":1}'
