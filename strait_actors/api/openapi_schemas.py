"""JSON Schemas of the OpenAPI document (api/openapi.py): what the API answers (render.py's shapes,
api.md §3) and the request bodies the handlers read. Job and trigger bodies come from the
validators' own tables (`validation.job_body_schema`, `trigger_body_schema`); the bounds of the
others are read from the constants their handlers check, where a handler names one."""

from __future__ import annotations

from typing import Any, Final

from strait_actors import fsm
from strait_actors.api import environments, events, jobs, projects, render, sdk, validation

Schema = dict[str, Any]

STR: Final[Schema] = {"type": "string"}
INT: Final[Schema] = {"type": "integer"}
BOOL: Final[Schema] = {"type": "boolean"}
TS: Final[Schema] = {"type": "string", "format": "date-time"}
MAP: Final[Schema] = {"type": "object", "additionalProperties": {"type": "string"}}
ANY: Final[Schema] = {}
STATUS: Final[Schema] = {"type": "string", "enum": sorted(fsm.ALL)}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, *, closed: bool = False) -> Schema:
    """An object with these required and optional properties; `closed`: the handler refuses others."""
    out: Schema = {"type": "object", "properties": {**required, **(optional or {})}}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


def array(items: Schema, **bounds: int) -> Schema:
    return {"type": "array", "items": items, **bounds}


def page(item: str) -> Schema:
    """A paginated list (api.md §2.2): `next_cursor` only when `has_more`."""
    return obj({"data": array(ref(item)), "has_more": BOOL}, {"next_cursor": STR})


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


# ----------------------------------------------------------------- responses (render.py)


def _kind(spec: Any) -> Schema:
    """A job field's type as a response carries it (the bounds are the request's business)."""
    if isinstance(spec, validation._Str):
        return STR
    if isinstance(spec, validation._Int):
        return INT
    return {k: v for k, v in validation.spec_schema("", spec, nullable=False).items() if k in ("type", "items")}


def _job() -> Schema:
    fields = validation._JOB_FIELDS
    required = {
        "id": STR,
        "project_id": STR,
        "name": STR,
        "slug": STR,
        "max_attempts": INT,
        "timeout_secs": INT,
        "retry_priority_boost": INT,
        "enabled": BOOL,
        "paused": BOOL,
        "version": INT,
        "version_id": STR,
        "version_policy": _kind(fields["version_policy"]),
        "cron_overlap_policy": _kind(fields["cron_overlap_policy"]),
        "rate_limit_keys": _kind(fields["rate_limit_keys"]),
        "has_dependencies": BOOL,
        "execution_mode": _kind(fields["execution_mode"]),
        "queue": STR,
        "queue_name": STR,
        "created_at": TS,
        "updated_at": TS,
    }
    optional = {name: _kind(fields[name]) for name in render._JOB_FIELDS if name in fields and name not in required}
    optional.update(
        pause_reason=STR,
        created_by=STR,
        updated_by=STR,
        paused_at=TS,
        project_paused={"type": "boolean", "const": True},
    )
    return obj(required, optional)


_RUN_TIMES = {name: TS for name in (*render._RUN_TIMES, "completed_at")}

RESPONSES: Final[dict[str, Schema]] = {
    "Error": obj(
        {
            "error": obj({"code": STR, "message": STR}, {"details": array(STR)}),
            "message": STR,
            "request_id": STR,
        }
    ),
    "Health": obj(
        {"status": STR, "version": STR, "timestamp": TS},
        {"edition": STR, "uptime_seconds": INT, "subsystems": MAP},
    ),
    "Ready": obj(
        {"status": {"type": "string", "enum": ["ready", "not_ready"]}},
        {"components": {"type": "object"}, "version": STR, "timestamp": STR},
    ),
    "Project": obj(
        {"id": STR, "org_id": STR, "name": STR, "paused": BOOL, "created_at": TS, "updated_at": TS},
        {"paused_at": TS, "pause_reason": STR},
    ),
    "ApiKey": obj(
        {"id": STR, "project_id": STR, "name": STR, "key_prefix": STR, "scopes": array(STR), "created_at": TS},
        {"key": {"type": "string", "pattern": "^strait_[0-9a-f]{64}$"}, "expires_at": TS, "revoked_at": TS},
    ),
    "Quotas": obj(
        {
            "project_id": STR,
            "timezone": STR,
            **{name: {"type": ["integer", "null"], "minimum": 0} for name in projects._QUOTA_INTS},
        },
        {"updated_at": TS},
    ),
    "Job": _job(),
    "JobVersion": obj(
        {"id": STR, "job_id": STR, "version": INT, "version_id": STR, "backwards_compatible": BOOL, "created_at": TS},
        {
            "name": STR,
            "slug": STR,
            "description": STR,
            "cron": STR,
            "payload_schema": ANY,
            "tags": MAP,
            "endpoint_url": STR,
            "fallback_endpoint_url": STR,
            "max_attempts": INT,
            "timeout_secs": INT,
            "webhook_url": STR,
            "run_ttl_secs": INT,
        },
    ),
    "Dependency": obj(
        {
            "id": STR,
            "job_id": STR,
            "depends_on_job_id": STR,
            "condition": {"type": "string", "enum": list(jobs.DEPENDENCY_CONDITIONS)},
            "created_at": TS,
        }
    ),
    "DependencyStatus": obj(
        {
            "run_id": STR,
            "status": STATUS,
            "waiting_on_dependencies": BOOL,
            "dependencies": array(obj({"id": STR, "depends_on_job_id": STR, "condition": STR, "met": BOOL})),
        }
    ),
    "Run": obj(
        {
            "id": STR,
            "job_id": STR,
            "project_id": STR,
            "status": STATUS,
            "attempt": INT,
            "payload": ANY,
            "tags": MAP,
            "metadata": MAP,
            "triggered_by": STR,
            "priority": INT,
            "lineage_depth": INT,
            "job_version": INT,
            "debug_mode": BOOL,
            "execution_mode": STR,
            "queue_name": STR,
            "created_at": TS,
        },
        {"result": ANY, **{name: STR for name in render._RUN_OPTIONAL}, **_RUN_TIMES},
    ),
    "Lineage": obj({"run_id": STR, "data": array(ref("Run"))}),
    "RunEvent": obj(
        {"id": STR, "run_id": STR, "type": STR, "level": STR, "message": STR, "data": ANY, "created_at": TS}
    ),
    "Checkpoint": obj({"id": STR, "run_id": STR, "sequence": INT, "source": STR, "state": ANY, "created_at": TS}),
    "Output": obj({"id": STR, "run_id": STR, "output_key": STR, "value": ANY, "created_at": TS}, {"schema": ANY}),
    "State": obj({"run_id": STR, "state_key": STR, "value": ANY, "updated_at": TS}),
    "Usage": obj(
        {
            "id": STR,
            "run_id": STR,
            "provider": STR,
            "model": STR,
            **{n: INT for n in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_microusd")},
            "created_at": TS,
        }
    ),
    "ToolCall": obj(
        {"id": STR, "run_id": STR, "tool_name": STR, "status": STR, "created_at": TS},
        {"input": ANY, "output": ANY, "duration_ms": INT},
    ),
    "EventTrigger": obj(
        {
            "id": STR,
            "event_key": STR,
            "project_id": STR,
            "source_type": STR,
            "status": {"type": "string", "enum": sorted(events.STATUSES)},
            "timeout_secs": INT,
            "trigger_type": STR,
            "notify_status": STR,
            "requested_at": TS,
            "expires_at": TS,
        },
        {
            **{name: STR for name in render._TRIGGER_OPTIONAL},
            "request_payload": ANY,
            "response_payload": ANY,
            "received_at": TS,
        },
    ),
    "Environment": obj(
        {"id": STR, "project_id": STR, "name": STR, "variables": MAP, "created_at": TS, "updated_at": TS},
        {"slug": STR, "description": STR},
    ),
    "JobGroup": obj(
        {"id": STR, "project_id": STR, "name": STR, "created_at": TS, "updated_at": TS}, {"description": STR}
    ),
    "TriggerReceipt": obj(
        {"id": STR, "status": STATUS, "payload_hash": STR, "idempotency_hit": {"type": "boolean", "const": False}}
    ),
    "IdempotencyHit": obj({"id": STR, "status": STATUS, "idempotency_hit": {"type": "boolean", "const": True}}),
    "DryRun": obj(
        {
            "job": obj(
                {
                    "id": STR,
                    "name": STR,
                    "slug": STR,
                    "execution_mode": STR,
                    "queue": STR,
                    "timeout_secs": INT,
                    "max_attempts": INT,
                    "version": INT,
                    "version_id": STR,
                }
            ),
            "payload_hash": STR,
            "payload": ANY,
        },
        {"scheduled_at": TS, "expires_at": TS},
    ),
    "BulkReceipt": obj(
        {
            "batch_id": STR,
            "results": array(obj({"id": STR, "status": STATUS, "idempotency_hit": BOOL})),
            "total": INT,
            "created": INT,
        }
    ),
    "SpawnReceipt": obj(
        {"id": STR, "job_id": STR, "project_id": STR, "status": STATUS, "parent_run_id": STR, "triggered_by": STR},
        {"await_completion": BOOL, "await_event_key": STR},
    ),
    "Waiting": obj({"status": {"const": "waiting"}, "event_key": STR, "expires_at": TS, "trigger_id": STR}),
    **{
        name: page(item)
        for name, item in (
            ("JobPage", "Job"),
            ("JobVersionPage", "JobVersion"),
            ("DependencyPage", "Dependency"),
            ("RunPage", "Run"),
            ("RunEventPage", "RunEvent"),
            ("CheckpointPage", "Checkpoint"),
            ("OutputPage", "Output"),
            ("UsagePage", "Usage"),
            ("ToolCallPage", "ToolCall"),
            ("EventTriggerPage", "EventTrigger"),
            ("EnvironmentPage", "Environment"),
            ("JobGroupPage", "JobGroup"),
            ("ApiKeyPage", "ApiKey"),
        )
    },
}

# ----------------------------------------------------------------- request bodies

_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "\\S"}
_REASON = {"type": ["string", "null"], "maxLength": 1000}
_QUOTA_CAP = 2**63 - 1
_SDK_TEXT = {"type": "string", "maxLength": sdk.MAX_TEXT}
_SHORT = {"type": ["string", "null"], "maxLength": 64}


def _anchored(python_pattern: str) -> str:
    """A `...\\Z` pattern of a handler as the ECMA regex of a schema."""
    return "^" + python_pattern.removesuffix("\\Z") + "$"


def _named(*, patch: bool, environment: bool) -> Schema:
    """An environment's or a job group's body (environments.named_fields)."""
    optional: dict[str, Schema] = {
        "description": {"type": ["string", "null"], "maxLength": 2000},
        "project_id": {"type": ["string", "null"]},
    }
    if environment:
        optional["slug"] = {
            "type": ["string", "null"],
            "maxLength": 128,
            "pattern": _anchored(environments._SLUG.pattern),
        }
        optional["variables"] = {
            "type": ["object", "null"],
            "maxProperties": environments.MAX_VARIABLES,
            "propertyNames": {"pattern": _anchored(environments._VAR_NAME.pattern)},
            "additionalProperties": {"type": "string", "maxLength": environments.MAX_VALUE_LEN},
        }
    if patch:
        return obj({}, {"name": {**_NAME, "type": ["string", "null"]}, **optional})
    return obj({"name": _NAME}, optional)


BODIES: Final[dict[str, Schema]] = {
    "JobCreate": validation.job_body_schema(patch=False),
    "JobPatch": validation.job_body_schema(patch=True),
    "Trigger": validation.trigger_body_schema(),
    "ProjectCreate": obj({"id": _NAME, "org_id": _NAME, "name": {**_NAME, "minLength": 2}}),
    "ApiKeyCreate": obj(
        {
            "project_id": _NAME,
            "name": _NAME,
            "scopes": array({"type": "string", "enum": sorted(projects.SCOPES)}, minItems=1),
        },
        {
            "org_id": {"type": ["string", "null"], "maxLength": 256},
            "environment_id": {"type": ["string", "null"], "maxLength": 256},
            "expires_in_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 36500},
        },
    ),
    "QuotasPut": obj(
        {},
        {
            **{
                name: {"type": ["integer", "null"], "minimum": 0, "maximum": projects._QUOTA_CAPS.get(name, _QUOTA_CAP)}
                for name in projects._QUOTA_INTS
            },
            "timezone": {"type": ["string", "null"], "description": "an IANA time zone name; default UTC"},
        },
        closed=True,
    ),
    "Pause": obj({}, {"reason": _REASON}),
    "Empty": {"type": "object"},
    "DependencyCreate": obj(
        {"depends_on_job_id": {"type": "string", "minLength": 1}},
        {"condition": {"type": "string", "enum": list(jobs.DEPENDENCY_CONDITIONS)}},
        closed=True,
    ),
    "BulkDlqReplay": {
        **obj(
            {},
            {
                "run_ids": array(STR, minItems=1, maxItems=500),
                "project_id": {"type": "string", "minLength": 1},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500},
            },
        ),
        "oneOf": [{"required": ["run_ids"]}, {"required": ["project_id"]}],
    },
    "EventSend": obj({}, {"payload": ANY}, closed=True),
    "EnvironmentCreate": _named(patch=False, environment=True),
    "EnvironmentPatch": _named(patch=True, environment=True),
    "JobGroupCreate": _named(patch=False, environment=False),
    "JobGroupPatch": _named(patch=True, environment=False),
    # the SDK plane (api.md §4.9): a field a call does not take is a 400 (sdk._body)
    "SdkEmpty": obj({}, closed=True),
    "SdkLog": obj(
        {"message": {**_SDK_TEXT, "minLength": 1}},
        {
            "level": {"type": ["string", "null"], "enum": [*sorted(sdk.LEVELS), None]},
            "type": {**_SHORT, "not": {"enum": ["state_change", "progress"]}},
            "data": {"type": ["object", "null"]},
        },
        closed=True,
    ),
    "SdkProgress": obj(
        {"percent": {"type": "number", "minimum": 0, "maximum": 100}},
        {
            "message": {**_SDK_TEXT, "type": ["string", "null"]},
            "step": {"type": ["string", "integer", "null"]},
            "eta_seconds": {"type": ["number", "null"], "minimum": 0},
        },
        closed=True,
    ),
    "SdkComplete": obj({}, {"result": ANY}, closed=True),
    "SdkFail": obj({"error": {**_SDK_TEXT, "minLength": 1}}, {"error_class": _SHORT}, closed=True),
    "SdkCheckpoint": obj({"state": {"not": {"type": "null"}}}, {"source": _SHORT}, closed=True),
    "SdkOutput": {
        **obj(
            {"value": ANY},
            {
                "key": {"type": "string", "minLength": 1, "maxLength": sdk.MAX_STATE_KEY},
                "output_key": {"type": "string", "minLength": 1, "maxLength": sdk.MAX_STATE_KEY},
                "schema": ANY,
            },
            closed=True,
        ),
        "anyOf": [{"required": ["key"]}, {"required": ["output_key"]}],
    },
    "SdkState": obj(
        {"key": {"type": "string", "minLength": 1, "maxLength": sdk.MAX_STATE_KEY}, "value": ANY}, closed=True
    ),
    "SdkAnnotate": obj(
        {
            "annotations": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 50,
                "propertyNames": {"minLength": 1, "maxLength": 128},
                "additionalProperties": {"type": "string", "maxLength": 1024},
            }
        },
        closed=True,
    ),
    "SdkUsage": obj(
        {
            "provider": {"type": "string", "minLength": 1, "maxLength": 256},
            "model": {"type": "string", "minLength": 1, "maxLength": 256},
        },
        {
            n: {"type": ["integer", "null"], "minimum": 0}
            for n in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_microusd")
        },
        closed=True,
    ),
    "SdkToolCall": obj(
        {"tool_name": {"type": "string", "minLength": 1, "maxLength": 256}},
        {"input": ANY, "output": ANY, "duration_ms": {"type": ["integer", "null"], "minimum": 0}, "status": _SHORT},
        closed=True,
    ),
    "SdkWait": obj(
        {"event_key": {"type": "string", "minLength": 1, "maxLength": validation.MAX_EVENT_KEY_BYTES}},
        {
            "timeout_secs": {"type": ["integer", "null"], "minimum": 1, "maximum": validation.MAX_WAIT_SECS},
            "notify_url": {"type": ["string", "null"], "maxLength": validation.MAX_URL_LEN},
        },
        closed=True,
    ),
    "SdkSpawn": obj(
        {"job_slug": {"type": "string", "minLength": 1, "maxLength": 255}, "project_id": _NAME},
        {
            "payload": ANY,
            "priority": {"type": ["integer", "null"], "minimum": 0, "maximum": 10},
            "await_completion": BOOL,
            "await_timeout_secs": {"type": ["integer", "null"], "minimum": 1, "maximum": validation.MAX_WAIT_SECS},
            "target_api_key": STR,
        },
        closed=True,
    ),
    "SdkContinue": obj({}, {"payload": ANY}, closed=True),
}

assert not set(RESPONSES) & set(BODIES), "a component name is both a response and a request body"
