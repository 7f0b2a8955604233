"""Errors that carry an HTTP status and the contract's error code (api.md §2.3).

Handlers and validators raise these; one middleware turns them into the envelope
`{"error": {"code", "message", "details"?}, "message", "request_id"}`.
"""

from __future__ import annotations

_CODES = {
    400: "bad_request",
    401: "authentication_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "validation_failed",
    429: "rate_limited",
    503: "service_unavailable",
}


class ApiError(Exception):
    """A failure the client caused or must see: rendered as the contract's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # 406/410/413/415 fall back to internal_error, as the Go server does (api.md §2.3)
        self.code = code or _CODES.get(status, "internal_error")
        self.details = details
        self.headers = headers or {}


def bad_request(message: str, details: list[str] | None = None) -> ApiError:
    return ApiError(400, message, details=details)


def unprocessable(message: str, details: list[str] | None = None) -> ApiError:
    return ApiError(422, message, details=details)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, message)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message)
