"""A lean HTTP/1.1 client for dispatch: keep-alive pools, one write per request, httptools parsing.

Dispatch is one POST per run, thousands a second, so the client's own cost decides the
worker's throughput: aiohttp's ClientSession spends ~130 µs of CPU per request, this ~35 µs.
It does only what dispatch needs: POST with a body, no redirects (a 3xx is just an answer),
a body read up to a cap, a deadline, TLS, and the SSRF guard on every new connection.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httptools
import yarl

from strait_actors import ssrf

MAX_IDLE_PER_HOST = 512
MAX_CONNECTING = 32


class HttpError(Exception):
    """The request could not be made or was not answered (the connection, not the status)."""


class ConnectionFailed(HttpError, ConnectionError):
    """Refused, reset or closed before a whole response."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed endpoint URL, cached per URL string."""

    scheme: str
    host: str  # for connecting (no brackets)
    port: int
    request_line_head: bytes  # b"POST /path HTTP/1.1\r\nHost: ...\r\n" (+ Authorization)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


@lru_cache(maxsize=4096)
def parse_target(url: str) -> Target:
    u = yarl.URL(url)
    if u.scheme not in ("http", "https") or not u.raw_host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = u.port or (443 if u.scheme == "https" else 80)
    host_header = u.host_port_subcomponent or u.raw_host
    path = u.raw_path_qs or "/"
    if any(c in path + host_header for c in " \r\n\t"):  # nothing may break the request line
        raise ValueError("invalid characters in URL")
    head = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n"
    if u.user is not None:
        creds = f"{u.user}:{u.password or ''}".encode()
        head += f"Authorization: Basic {base64.b64encode(creds).decode()}\r\n"
    return Target(u.scheme, u.raw_host, port, head.encode("latin-1"))


def encode_headers(headers: dict[str, str]) -> bytes:
    """Header block; CR/LF in values are dropped so no value can inject a header."""
    out = []
    for name, value in headers.items():
        clean = value.replace("\r", " ").replace("\n", " ")
        out.append(f"{name}: {clean}\r\n")
    return "".join(out).encode("latin-1", "replace")


class _Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request at a time."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.cap = 0
        self.closed = False
        self.got_bytes = False
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the end is known without EOF
        self.keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"invalid HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.headers_done and not self.framed:  # body delimited by the end of the connection
                self._finish()
            else:
                self._fail(ConnectionFailed("connection closed before a complete response"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"content-length" or (low == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, chunk: bytes) -> None:
        if self.size < self.cap:
            self.body.append(chunk[: self.cap - self.size])
        self.size += len(chunk)
        if self.size > self.cap:  # over the cap: answer with what we have, drop the connection
            self._finish()
            self.close()

    def on_message_complete(self) -> None:
        self._finish()

    # helpers
    def _finish(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def start(self, loop: asyncio.AbstractEventLoop, data: bytes, cap: int) -> asyncio.Future[tuple[int, bytes]]:
        self.parser = httptools.HttpResponseParser(self)
        self.body, self.size, self.cap = [], 0, cap
        self.got_bytes = self.headers_done = self.framed = self.keep_alive = False
        self.waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def reusable(self) -> bool:
        return not self.closed and self.size <= self.cap and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClient:
    """Pools keep-alive connections per (scheme, host, port); guards every new connection."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.idle: dict[tuple[str, str, int], list[_Conn]] = defaultdict(list)
        self.connecting: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _address(self, loop: asyncio.AbstractEventLoop, target: Target) -> str:
        """The address to dial; with the guard on, every resolved address must be public."""
        if self.allow_private:
            return target.host
        host = f"[{target.host}]" if ":" in target.host else target.host
        ssrf.check_dial_target(f"{target.scheme}://{host}:{target.port}/")
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        addresses = [str(info[4][0]) for info in infos]
        if not addresses or any(ssrf.is_blocked_ip(ipaddress.ip_address(a.split("%", 1)[0])) for a in addresses):
            raise ssrf.UnsafeAddress(f"blocked address for host {target.host}")
        return addresses[0]

    async def _connect(self, loop: asyncio.AbstractEventLoop, target: Target) -> _Conn:
        address = await self._address(loop, target)
        tls: dict[str, Any] = {}
        if target.scheme == "https":
            tls = {"ssl": self._ssl_context(), "server_hostname": target.host}
        try:
            _, conn = await loop.create_connection(lambda: _Conn(target.key), address, target.port, **tls)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {target.host}:{target.port}: {exc}") from exc
        return conn

    async def _new_or_pooled(self, loop: asyncio.AbstractEventLoop, target: Target) -> _Conn:
        """Open a connection, at most MAX_CONNECTING at once per host: a burst of hundreds of
        connects overflows an endpoint's listen backlog (its SYNs are then retried after 1 s)."""
        gate = self.connecting.get(target.key)
        if gate is None:
            gate = self.connecting[target.key] = asyncio.Semaphore(MAX_CONNECTING)
        async with gate:
            conn = self._pooled(target.key)  # freed while we waited
            return conn if conn is not None else await self._connect(loop, target)

    def _pooled(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def post(self, url: str, body: bytes, headers: bytes, *, timeout: float, max_body: int) -> tuple[int, bytes]:
        """(status, body up to max_body bytes); raises TimeoutError, HttpError, ssrf.UnsafeAddress."""
        target = parse_target(url)
        data = target.request_line_head + b"Content-Length: %d\r\n" % len(body) + headers + b"\r\n" + body
        loop = asyncio.get_running_loop()
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = self._pooled(target.key)
                if conn is not None:
                    try:
                        return await self._exchange(loop, conn, data, max_body)
                    except ConnectionFailed:
                        if conn.got_bytes:
                            raise
                        # the server closed an idle keep-alive connection: once more on a new one
                conn = await self._new_or_pooled(loop, target)
                return await self._exchange(loop, conn, data, max_body)
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Conn, data: bytes, max_body: int
    ) -> tuple[int, bytes]:
        answer = await conn.start(loop, data, max_body)
        if conn.reusable():
            idle = self.idle[conn.key]
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(conn)
            else:
                conn.close()
        else:
            conn.close()
        return answer

    async def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
