"""The CLI's HTTP client: JSON calls and the run stream, over the standard library's urllib.

urllib rather than httpx or aiohttp: the CLI makes a few calls one after another and reads one
line-oriented stream, which urllib does in a few lines; httpx would be a new runtime dependency
(it is a test-only one here) and aiohttp's event loop buys nothing for one call at a time.

Every failure leaves this module as a `ClientError` carrying one line for the user and the exit
code it deserves; nothing else escapes (no traceback reaches the terminal).
"""

from __future__ import annotations

import getpass
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from strait_actors import __version__

# exit codes (documented in the README): 1 is kept for "the thing asked about did not succeed"
# (a run that ended other than completed, a server that is not ready)
EXIT_USAGE = 2
EXIT_SERVER = 3


class ClientError(Exception):
    """A failure to show as one line on stderr, with the process's exit code."""

    exit_code = 1


class UsageError(ClientError):
    """Bad flags, a bad file, missing credentials: the command itself cannot be run."""

    exit_code = EXIT_USAGE


class Unreachable(ClientError):
    """No answer from the server (refused, unknown host, timed out, connection lost)."""

    exit_code = EXIT_SERVER


class ServerError(ClientError):
    """The server answered with an error envelope (api.md §2.3)."""

    exit_code = EXIT_SERVER

    def __init__(self, status: int, message: str, code: str = "", text: str = "") -> None:
        super().__init__(f"error {status}: {message}")
        self.status = status
        self.code = code
        self.text = text  # the answer's body as sent (JSON mode prints it)


@dataclass(frozen=True)
class Reply:
    """A 2xx answer: its status, its JSON (None when empty) and its text as the server sent it."""

    status: int
    data: Any
    text: str


def _reason(exc: BaseException) -> str:
    """A one-line account of a network failure ('Connection refused', 'timed out', ...)."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror or reason})"
    if isinstance(reason, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return str(reason.strerror)
    text = " ".join(str(reason).split())
    return text or type(reason).__name__


def error_message(status: int, raw: bytes, fallback: str) -> ServerError:
    """The envelope's message (nested, or the top-level copy), its details on the same line."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text) if raw else None
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    if not isinstance(message, str) and isinstance(body, dict):
        message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        message = fallback or "the server gave no reason"
    details = err.get("details") if isinstance(err, dict) else None
    if isinstance(details, list) and details:
        message = f"{message} ({'; '.join(str(d) for d in details)})"
    code = err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), str) else ""
    return ServerError(status, " ".join(message.split()), str(code), text)


class Api:
    """One server, one credential. `token` is an API key (`strait_…`) or the internal secret; the
    project goes in X-Project-Id (a key's own project wins on the server, api.md §1.3)."""

    def __init__(self, base_url: str, token: str | None, project: str | None = None, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.project = project
        self.timeout = timeout

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": f"strait-cli/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
            if not self.token.startswith("strait_"):
                # the secret carries no identity of its own: created_by and audit read this
                headers["X-Actor-Id"] = f"cli:{_user()}"
        if self.project:
            headers["X-Project-Id"] = self.project
        return headers

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        pairs = [(k, v) for k, v in (query or {}).items() if v is not None]
        qs = urllib.parse.urlencode(pairs, doseq=True)
        return f"{self.base}{path}" + (f"?{qs}" if qs else "")

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """One request; a 2xx is returned, anything else raised as a ClientError."""
        all_headers = self._headers() | dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode()
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url(path, query), data=data, headers=all_headers, method=method)
        with self._open(req, timeout or self.timeout) as resp:
            raw = self._read(resp)
            status = resp.status
        text = raw.decode("utf-8", "replace")
        if not text.strip():
            return Reply(status, None, "")
        try:
            return Reply(status, json.loads(text), text)
        except ValueError:
            raise ServerError(status, "the server's answer is not JSON") from None

    def stream(self, path: str, last_event_id: str | None, timeout: float) -> Iterator[tuple[str | None, Any]]:
        """Server-Sent Events: (id, message) per `data:` frame, (None, None) per comment (a
        keep-alive), so the caller can look at its clock; ends when the server closes."""
        headers = self._headers("text/event-stream")
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        req = urllib.request.Request(self.url(path), headers=headers, method="GET")
        with self._open(req, timeout) as resp:
            frame_id: str | None = None
            data: list[str] = []
            while True:
                line = self._readline(resp)
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                if text.startswith(":"):
                    yield None, None
                elif text.startswith("id:"):
                    frame_id = text[3:].strip()
                elif text.startswith("data:"):
                    data.append(text[5:].removeprefix(" "))
                elif not text and data:
                    try:
                        message = json.loads("\n".join(data))
                    except ValueError:
                        raise ServerError(resp.status, "the stream sent a frame that is not JSON") from None
                    yield frame_id, message
                    data = []

    def _open(self, req: urllib.request.Request, timeout: float) -> http.client.HTTPResponse:
        try:
            resp: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=timeout)
            return resp
        except urllib.error.HTTPError as exc:
            with exc:
                raw = self._read(exc)
            raise error_message(exc.code, raw, str(exc.reason or "")) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"cannot reach {self.base}: {_reason(exc)}") from None
        except ValueError as exc:  # urllib's own refusal of a request it cannot send
            raise UsageError(f"cannot send the request to {self.base}: {exc}") from None

    def _read(self, resp: Any) -> bytes:
        try:
            raw: bytes = resp.read()
            return raw
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"lost the connection to {self.base}: {_reason(exc)}") from None

    def _readline(self, resp: http.client.HTTPResponse) -> bytes:
        try:
            return resp.readline()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"lost the stream from {self.base}: {_reason(exc)}") from None


def seg(value: str) -> str:
    """A path parameter, quoted whole (an event key may hold '/', ':' or '?')."""
    return urllib.parse.quote(value, safe="")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's nameless uid)
        return "unknown"
