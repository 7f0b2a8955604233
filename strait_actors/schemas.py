"""Tenant JSON Schemas (a job's payload_schema and result_schema), made safe to hold and to run.

A tenant's schema runs in our processes, so it may never fetch anything and never run long:
- references resolve only inside the schema (`#…`); a remote or file `$ref` is refused when the
  job is saved, and the validator has no way to retrieve one anyway;
- a validation runs under a deadline the caller gives (VALIDATION_BUDGET by default): every
  keyword checks it before it runs, every regex (`pattern`, `patternProperties`) runs on the
  `regex` engine with the time left, and `uniqueItems` is linear, so no keyword is unbounded;
  past the deadline, validation stops with `OutOfTime`;
- a schema that loops (`{"$ref": "#"}`) or cannot be resolved is a `SchemaUnusable`, not a crash.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Mapping
from fractions import Fraction
from functools import lru_cache
from typing import Any

import regex
from jsonschema import ValidationError, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

VALIDATION_BUDGET = 0.5  # seconds one validation may take, unless the caller gives a deadline
_REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")
_BASE = "urn:strait:schema"
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("schema_deadline", default=0.0)


class SchemaInvalid(ValueError):
    """A schema that cannot be saved; the message says why (the API answers 400)."""


class SchemaUnusable(ValueError):
    """A saved schema that cannot judge this instance: it loops, or its references do not resolve."""


class OutOfTime(SchemaUnusable):
    """The validation passed its deadline before it could decide."""


class _Expired(Exception):
    """Raised inside a validation at its deadline (never caught by jsonschema)."""


def _refuse(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


_NO_RETRIEVAL: Registry[Any] = Registry(retrieve=_refuse)  # type: ignore[call-arg]


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> Any:
    return regex.compile(pattern)


def _search(pattern: str, text: str) -> bool:
    left = _deadline.get() - time.monotonic()
    if left <= 0:
        raise _Expired
    try:
        return _compiled(pattern).search(text, timeout=left) is not None
    except TimeoutError:
        raise _Expired from None


def _timed(keyword: Any) -> Any:
    """A keyword that first checks the validation's deadline."""

    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if time.monotonic() > _deadline.get():
            raise _Expired
        return keyword(validator, value, instance, schema)

    return run


def _identity(value: Any) -> Any:
    """A hashable stand-in with JSON equality: 1 == 1.0, but true != 1; object keys unordered."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_identity(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, _identity(v)) for k, v in value.items()))
    return ("x", id(value))


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, true != 1, object key order does not count."""
    return bool(_identity(a) == _identity(b))


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """Linear in the array (jsonschema compares unsortable items pairwise: quadratic)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for i, item in enumerate(instance):
        if i % 256 == 0 and time.monotonic() > _deadline.get():
            raise _Expired
        key = _identity(item)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for k, v in instance.items():
            if _search(patrn, k):
                yield from validator.descend(v, subschema, path=k, schema_path=patrn)


def _additional(validator: Any, aP: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    props, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    extras = [k for k in instance if k not in props and not any(_search(p, k) for p in patterns)]
    if validator.is_type(aP, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], aP, path=extra)
    elif not aP and extras:
        yield ValidationError(f"Additional properties are not allowed ({', '.join(map(repr, sorted(extras)))})")


def _multiple_of(validator: Any, step: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """Exact, on the numbers as written: jsonschema divides as floats (an integer beyond a double
    overflows, and 0.3 is not a multiple of 0.1 there)."""
    if not validator.is_type(instance, "number"):
        return
    if (Fraction(repr(instance)) / Fraction(repr(step))).denominator != 1:
        yield ValidationError(f"{instance!r} is not a multiple of {step!r}")


_SAFE_KEYWORDS = {
    "multipleOf": _multiple_of,
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional,
    "uniqueItems": _unique_items,
}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _REF_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        if isinstance(node.get("patternProperties"), dict):
            yield from node["patternProperties"]
        for value in node.values():
            yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def check(schema: Any) -> None:
    """Create/update time: a valid schema whose references stay inside it and whose regexes compile."""
    if not isinstance(schema, dict):
        raise SchemaInvalid("must be a JSON object")
    if not isinstance(schema.get("$schema", ""), str):
        raise SchemaInvalid("$schema must be a string")
    try:
        # explicit default: an unknown $schema falls back to 2020-12 instead of warning
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
        resolver = _registry(schema).resolver(_BASE)
        for ref in _refs(schema):
            if not ref.startswith("#"):
                raise SchemaInvalid(f"$ref {ref!r} points outside the schema; only local references (#...)")
            resolver.lookup(ref)
        for patrn in _patterns(schema):
            _compiled(patrn)
    except SchemaError as exc:
        raise SchemaInvalid(exc.message) from None
    except Unresolvable as exc:
        raise SchemaInvalid(f"$ref cannot be resolved: {exc}") from None
    except (regex.error, TypeError) as exc:
        raise SchemaInvalid(f"invalid pattern: {exc}") from None
    except RecursionError:
        raise SchemaInvalid("schema is nested too deeply") from None


def _registry(schema: dict[str, Any]) -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(schema, default_specification=DRAFT202012)
    registry: Registry[Any] = _NO_RETRIEVAL.with_resource(_BASE, resource)
    return registry


@lru_cache(maxsize=16)
def _safe_class(base: Any) -> Any:
    keywords = {**base.VALIDATORS, **_SAFE_KEYWORDS}
    return validators.extend(base, {name: _timed(fn) for name, fn in keywords.items()})


def validator(schema: dict[str, Any]) -> Validator:
    """A validator for `schema` that fetches nothing and bounds its regexes (build once, reuse)."""
    cls = _safe_class(validator_for(schema, default=Draft202012Validator))
    return cls(schema, registry=_registry(schema))


_job_validators: dict[tuple[Any, int, str], Validator] = {}


def job_validator(job: Mapping[str, Any], column: str) -> Validator:
    """The validator of a job's schema column (`payload_schema`, `result_schema`), compiled once
    per job version."""
    key = (job["id"], job["version"], column)
    found = _job_validators.get(key)
    if found is None:
        found = validator(job[column])
        if len(_job_validators) > 1000:
            _job_validators.clear()
        _job_validators[key] = found
    return found


def first_error(v: Validator, instance: Any, deadline: float | None = None) -> ValidationError | None:
    """The most relevant error, or None; raises SchemaUnusable when the schema cannot decide, and
    OutOfTime at `deadline` (a `time.monotonic()` instant; default VALIDATION_BUDGET from now)."""
    token = _deadline.set(time.monotonic() + VALIDATION_BUDGET if deadline is None else deadline)
    try:
        return best_match(v.iter_errors(instance))
    except RecursionError:
        raise SchemaUnusable("the schema's references loop") from None
    except _Expired:
        raise OutOfTime("validation ran out of time") from None
    except Unresolvable as exc:
        raise SchemaUnusable(f"the schema's $ref cannot be resolved: {exc}") from None
    finally:
        _deadline.reset(token)
