"""Outbound HTTP: the dispatch request of api.md §5 and what its answer means (§5.4).

`call()` never raises for an expected outcome: 2xx, 4xx, 5xx, timeouts and refused
connections all come back as an `Outcome` value carrying the retry decision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from datetime import UTC
from urllib.parse import quote

import orjson

from strait_actors import payloads, retry, ssrf, tokens
from strait_actors.fsm import S
from strait_actors.httpclient import HttpClient, HttpError, encode_headers
from strait_actors.model import ClaimedRun, Outcome


def make_client(*, allow_private: bool, calls: int, on_redial: Callable[[], None] | None = None) -> HttpClient:
    """One shared client per dispatch loop, making up to `calls` at once: connection reuse is most
    of the speed."""
    return HttpClient(allow_private=allow_private, on_redial=on_redial, calls=calls)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def build_headers(run: ClaimedRun, jwt_key: str, body: bytes) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "X-Run-ID": run.id,
        "X-Job-ID": run.job_id,
        "X-Attempt": str(run.attempt),
        "X-Run-Token": tokens.mint_run_token(
            jwt_key, run.id, run.attempt, run.lease_id, expires_at=run.expires_at, timeout_secs=run.timeout_secs
        ),
    }
    if run.signing_secret:
        ts = int(time.time())
        headers["X-Strait-Timestamp"] = str(ts)
        headers["X-Strait-Signature"] = sign(run.signing_secret, ts, body)
    if run.traceparent:
        headers["traceparent"] = run.traceparent
        if run.tracestate:
            headers["tracestate"] = run.tracestate
    if run.attempt > 1 and run.previous_error:
        headers["X-Previous-Error"] = run.previous_error[:1024].replace("\r", " ").replace("\n", " ")
    if run.last_checkpoint is not None:
        # ASCII-escaped JSON: a header carries latin-1 at best, and the value must parse back
        state = json.dumps(json.loads(run.last_checkpoint), ensure_ascii=True, separators=(",", ":"))
        if len(state) <= MAX_CHECKPOINT_HEADER:
            headers["X-Last-Checkpoint"] = state
            if run.checkpoint_at is not None:
                headers["X-Checkpoint-At"] = run.checkpoint_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if run.resume_event_key:
        headers["X-Resume-Event-Key"] = quote(run.resume_event_key, safe=_HEADER_SAFE)
    return headers


MAX_CHECKPOINT_HEADER = 64 * 1024
# printable ASCII but '%' stays as it is in X-Resume-Event-Key; anything else is percent-encoded
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


# Numbers JSON parsers take (as 0.0) but PostgreSQL's numeric cannot hold: more than 16383 digits
# after the point, which an exponent below -9999 or a fraction that long gives.
_UNSTORABLE_NUMBER = re.compile(rb"[eE]-0*[1-9][0-9]{4,}|\.[0-9]{16000,}")


def result_json(body: bytes) -> str | None:
    """Empty -> no result; JSON that reads back as it was stored -> itself; anything else (not
    JSON, numbers beyond a double or PostgreSQL's numeric, nesting beyond 1024) -> a JSON string."""
    if not body.strip():
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _as_string(body)
    if _UNSTORABLE_NUMBER.search(body) and not _numbers_fit(body):
        return _as_string(body)
    if b"\\u0000" in body:  # PostgreSQL jsonb refuses NUL characters
        return orjson.dumps(payloads.clean_json(value)).decode()  # the payloads' own NUL rule
    return body.decode("utf-8", "replace")


def _numbers_fit(body: bytes) -> bool:
    """The exact check behind the quick scan: does every number fit PostgreSQL's numeric?"""

    def number(text: str) -> float:
        mantissa, _, exponent = text.lower().partition("e")
        if len(mantissa.partition(".")[2]) - int(exponent or 0) > 16383:  # digits after the point
            raise ValueError(text)
        return 0.0

    try:
        json.loads(body, parse_float=number)
    except (ValueError, RecursionError):
        return False
    return True


def _as_string(body: bytes) -> str:
    return orjson.dumps(body.decode("utf-8", "replace").replace("\x00", "")).decode()


def decide_failure(run: ClaimedRun, error: str, error_class: str, *, timed_out: bool = False) -> Outcome:
    """Retry if attempts remain (and, for failures, the class is retryable); else the end state."""
    can_retry = run.attempt < run.max_attempts and (timed_out or retry.is_retryable(error_class))
    if can_retry:
        delay = retry.retry_delay(run.retry_strategy, run.attempt, list(run.retry_delays_secs or ()))
        return Outcome(
            run.id, run.attempt, run.lease_id, S.QUEUED, None, error, error_class, delay, run.retry_priority_boost
        )
    final = S.TIMED_OUT if timed_out else S.DEAD_LETTER
    return Outcome(run.id, run.attempt, run.lease_id, final, None, error, error_class, 0.0, 0)


def _network_failure(exc: BaseException) -> tuple[str, str]:
    """Classed by the error's type: its text may hold a host name ("zoom.example" is not an OOM)."""
    if isinstance(exc, ssrf.UnsafeAddress | ssrf.UnsafeURL):
        return f"endpoint blocked: {exc}", "client"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ConnectionError | OSError):
        return f"connection error: {text}", "connection"
    if isinstance(exc, ValueError):
        return f"invalid endpoint url: {text}", "client"
    return f"request failed: {text}", "transient"


# engine.md §3.5: the primary failures that go to a job's fallback endpoint (a timeout too, but it
# shares the primary's deadline, so only a primary that failed before it leaves the fallback time)
FALLBACK_CLASSES = frozenset({"rate_limited", "transient", "connection"})


async def _post(
    client: HttpClient, url: str, run: ClaimedRun, payload: bytes, jwt_key: str, timeout: float, max_body: int
) -> tuple[int, bytes, str, str, bool]:
    """(status, body, error, error class, timed out): status 0 when no answer came."""
    try:
        status, body = await client.post(
            url, payload, encode_headers(build_headers(run, jwt_key, payload)), timeout=timeout, max_body=max_body
        )
    except TimeoutError:
        return 0, b"", "execution timed out", "transient", True
    except (HttpError, OSError, ValueError) as exc:
        error, error_class = _network_failure(exc)
        return 0, b"", error, error_class, False
    if 200 <= status < 300:
        return status, body, "", "", False
    return status, body, f"endpoint returned {status}", retry.classify_status(status), False


async def call(
    client: HttpClient, run: ClaimedRun, *, jwt_key: str, http_timeout_cap: float, max_response_bytes: int
) -> Outcome:
    """POST the raw payload to the endpoint and turn the answer into an Outcome. A transient failure
    of the primary goes to the job's fallback endpoint (re-signed, within the same deadline): its 2xx
    completes the run; if it fails too, both errors go through the usual failure handling."""
    payload = run.payload.encode()
    timeout = min(float(run.timeout_secs), http_timeout_cap)
    deadline = time.monotonic() + timeout
    status, body, error, error_class, timed_out = await _post(
        client, run.endpoint_url, run, payload, jwt_key, timeout, max_response_bytes
    )
    if status and not error:
        return Outcome(run.id, run.attempt, run.lease_id, S.COMPLETED, result_json(body), None, None, 0.0, 0, status)
    left = deadline - time.monotonic()
    if run.fallback_endpoint_url and error_class in FALLBACK_CLASSES and left > 0:
        f_status, f_body, f_error, _, f_timed_out = await _post(
            client, run.fallback_endpoint_url, run, payload, jwt_key, left, max_response_bytes
        )
        if f_status and not f_error:
            body_json = result_json(f_body)
            return Outcome(run.id, run.attempt, run.lease_id, S.COMPLETED, body_json, None, None, 0.0, 0, f_status)
        error, timed_out = f"{error}; fallback: {f_error}", f_timed_out
    outcome = decide_failure(run, error, error_class, timed_out=timed_out)
    return dataclasses.replace(outcome, http_status=status) if status else outcome
