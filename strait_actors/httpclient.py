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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httptools
import yarl

from strait_actors import ssrf

MAX_IDLE_PER_HOST = 512  # at least: a client that makes more calls at once keeps that many (`calls`)
MAX_IDLE_TOTAL = 1024  # across hosts, likewise: open sockets are capped at this + the calls in flight
# An idle socket older than this is closed, not reused: 90 s, engine.md §3.2's idle connection time
# (and Go's http.Transport default). A call after a quiet spell shorter than that (a job that fires
# every minute, a trigger now and then) reuses its endpoint's socket instead of connecting again and,
# for https, doing another TLS handshake. A server that closes an idle socket sooner is seen doing it
# (`_Conn.connection_lost`); one that closes it just as a call is sent gets that call again on a fresh
# connection (`HttpClient.post`).
IDLE_TTL = 90.0
TLS_HANDSHAKE_SECS = 10.0  # engine.md §3.2; the call's own deadline still bounds connect + handshake
SWEEP_EVERY = 5.0
MAX_CONNECTING = 32
# A connect try that outlasts DIAL_PATIENCE times the host's usual connect time (at least DIAL_MIN,
# at most DIAL_MAX: the kernel's own first SYN retransmit) dials again, each wait twice the last.
DIAL_PATIENCE = 8
DIAL_MIN = 0.05
DIAL_MAX = 1.0
DIAL_HOSTS = 4096  # hosts whose connect time is remembered (the least recently dialled go first)
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024


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
        self.head_size = 0  # bytes received before the headers were complete
        self.header_count = 0
        self.idle_since = 0.0
        self.stray = False  # a response nobody asked for began after the answer: never reused

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():  # an idle connection the server talks on
            self.close()
            return
        self.got_bytes = True
        if not self.headers_done:
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"invalid HTTP response: {exc}"))
            self.close()
            return
        if not self.headers_done and self.head_size > MAX_HEADER_BYTES:  # e.g. an endless header line
            self._too_big()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.headers_done and not self.framed:  # body delimited by the end of the connection
                self._finish()
            else:
                self._fail(ConnectionFailed("connection closed before a complete response"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.waiter is None or self.waiter.done():  # a second response after the answer
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > MAX_HEADERS:
            self._too_big()
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
    def _too_big(self) -> None:
        self._fail(HttpError(f"response headers exceed {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes"))
        self.close()

    def _finish(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def start(self, loop: asyncio.AbstractEventLoop, data: bytes, cap: int) -> asyncio.Future[tuple[int, bytes]]:
        # the parser of the answer before goes on to this one (llhttp starts a message again after
        # one completes); a connection it could not leave clean is not reused (`reusable`)
        self.body, self.size, self.cap = [], 0, cap
        self.got_bytes = self.headers_done = self.framed = self.keep_alive = False
        self.head_size = self.header_count = 0
        self.waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter

    def reusable(self) -> bool:
        return not self.closed and not self.stray and self.size <= self.cap and self.keep_alive

    def expire(self) -> None:
        """The call's deadline passed (a timer of `HttpClient._exchange`)."""
        self._fail(TimeoutError())
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _connected(sock: socket.socket) -> bool:
    """Did this non-blocking socket's connect complete?"""
    try:
        sock.getpeername()
    except OSError:
        return False
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


@lru_cache(maxsize=1024)
def _ip_literal(host: str, port: int) -> list[tuple[Any, ...]]:
    """getaddrinfo's answer for an IP address (what the guard's `_address` hands over), without a
    resolver thread; [] for a name or a scoped IPv6 address, which getaddrinfo resolves."""
    for family, address in ((socket.AF_INET, (host, port)), (socket.AF_INET6, (host, port, 0, 0))):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)]
    return []


class _Gate:
    """At most MAX_CONNECTING connects at once to one host; dropped when nobody uses it."""

    __slots__ = ("sem", "users")

    def __init__(self) -> None:
        self.sem = asyncio.Semaphore(MAX_CONNECTING)
        self.users = 0


class HttpClient:
    """Pools keep-alive connections per (scheme, host, port); guards every new connection.

    Bounded whatever the tenants' endpoints do: at most MAX_IDLE_PER_HOST idle sockets a host and
    MAX_IDLE_TOTAL in all (the least recently used go first), none idle longer than IDLE_TTL, and
    a host's connect gate lives only while a connect to it is under way. A client that makes up to
    `calls` requests at once keeps up to that many idle, a host and in all: the answers to a wave
    of calls to one endpoint all come back idle, and the next wave takes them again (with 1,000
    calls in flight and 512 kept, ratio.sh 100 dialled 3,000 connections for 1,000 sockets' work).
    """

    def __init__(self, *, allow_private: bool, on_redial: Callable[[], None] | None = None, calls: int = 0) -> None:
        self.allow_private = allow_private
        self.idle_per_host = max(MAX_IDLE_PER_HOST, calls)
        self.idle_total = max(MAX_IDLE_TOTAL, calls)
        self.on_redial = on_redial  # told of each connect try dropped for a fresh one (a metric)
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self.lru: OrderedDict[_Conn, None] = OrderedDict()  # every idle connection, oldest first
        self.connecting: dict[tuple[str, str, int], _Gate] = {}
        self.dial_times: OrderedDict[tuple[str, str, int], float] = OrderedDict()  # smoothed, seconds
        self.redials = 0  # connect tries abandoned for a fresh one (dropped SYNs)
        self.next_sweep = 0.0
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
            tls = {
                "ssl": self._ssl_context(),
                "server_hostname": target.host,
                "ssl_handshake_timeout": TLS_HANDSHAKE_SECS,
            }
        try:
            sock = await self._dial(loop, target.key, address, target.port)
            try:
                _, conn = await loop.create_connection(lambda: _Conn(target.key), sock=sock, **tls)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect to {target.host}:{target.port}: {exc}") from exc
        return conn

    async def _dial(
        self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int], host: str, port: int
    ) -> socket.socket:
        """A connected TCP socket to the first of `host`'s addresses that takes one. An endpoint
        whose accept queue is full drops a new connection's SYN without a word, and the kernel sends
        the next one only after a second: a burst of new connections to a busy endpoint then stalls
        for a second (ratio.sh 100: the last runs of 20,000 took 1.2-1.5 s against 0.1). So a try
        that outlasts DIAL_PATIENCE times this host's usual connect time is dropped for a fresh one,
        the wait doubling each time; a host not dialled before waits the kernel's second."""
        infos = _ip_literal(host, port) or await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"no address for {host}")
        usual = self.dial_times.get(key)
        wait = DIAL_MAX if usual is None else min(DIAL_MAX, max(DIAL_MIN, DIAL_PATIENCE * usual))
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            while True:
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                began = loop.time()
                try:
                    async with asyncio.timeout(wait):
                        await loop.sock_connect(sock, address)
                except TimeoutError:
                    if not _connected(sock):  # (a busy loop may see the timer before the connect)
                        sock.close()
                        self.redials += 1
                        if self.on_redial is not None:
                            self.on_redial()
                        wait *= 2  # uncapped: a path slower than DIAL_MAX still connects
                        continue
                except OSError as exc:
                    sock.close()
                    error = exc
                    break
                except BaseException:
                    sock.close()
                    raise
                took = loop.time() - began
                self.dial_times[key] = took if usual is None else 0.8 * usual + 0.2 * took
                self.dial_times.move_to_end(key)
                if len(self.dial_times) > DIAL_HOSTS:
                    self.dial_times.popitem(last=False)
                return sock
        assert error is not None
        raise error

    async def _new_or_pooled(self, loop: asyncio.AbstractEventLoop, target: Target) -> _Conn:
        """Open a connection, at most MAX_CONNECTING at once per host: a burst of hundreds of
        connects overflows an endpoint's listen backlog (the kernel resends a dropped SYN only after
        1 s; `_dial` dials again sooner)."""
        gate = self.connecting.get(target.key)
        if gate is None:
            gate = self.connecting[target.key] = _Gate()
        gate.users += 1
        try:
            async with gate.sem:
                conn = self._pooled(target.key, loop.time())  # freed while we waited
                return conn if conn is not None else await self._connect(loop, target)
        finally:
            gate.users -= 1
            if not gate.users:
                del self.connecting[target.key]

    def _pooled(self, key: tuple[str, str, int], now: float) -> _Conn | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            del self.lru[conn]
            if not idle:
                del self.idle[key]
            if not conn.closed and now - conn.idle_since < IDLE_TTL:
                return conn
            conn.close()
        return None

    def _put_idle(self, conn: _Conn, now: float) -> None:
        idle = self.idle.setdefault(conn.key, [])
        if len(idle) >= self.idle_per_host:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)
        self.lru[conn] = None
        while len(self.lru) > self.idle_total:
            self._evict(next(iter(self.lru)))
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_EVERY
            while self.lru and now - (oldest := next(iter(self.lru))).idle_since >= IDLE_TTL:
                self._evict(oldest)

    def _evict(self, conn: _Conn) -> None:
        del self.lru[conn]
        idle = self.idle[conn.key]
        idle.remove(conn)
        if not idle:
            del self.idle[conn.key]
        conn.close()

    def open_counts(self) -> tuple[int, int, int]:
        """(idle connections, hosts with idle connections, hosts with a connect gate)."""
        return len(self.lru), len(self.idle), len(self.connecting)

    async def post(self, url: str, body: bytes, headers: bytes, *, timeout: float, max_body: int) -> tuple[int, bytes]:
        """(status, body up to max_body bytes); raises TimeoutError, HttpError, ssrf.UnsafeAddress.

        The deadline covers the whole call: a wait for a connect slot, the connect, the exchange. A
        pooled connection's exchange is timed by one timer on the loop (`_Conn.expire`), not an
        `asyncio.timeout` per call: dispatch makes thousands a second."""
        target = parse_target(url)
        data = target.request_line_head + b"Content-Length: %d\r\n" % len(body) + headers + b"\r\n" + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._pooled(target.key, loop.time())
        if conn is not None:
            try:
                return await self._exchange(loop, conn, data, max_body, deadline)
            except ConnectionFailed:
                if conn.got_bytes:
                    raise
                # the server closed an idle keep-alive connection: once more on a new one
            except BaseException:
                conn.close()
                raise
            conn = None
        try:
            async with asyncio.timeout_at(deadline):
                conn = await self._new_or_pooled(loop, target)
            return await self._exchange(loop, conn, data, max_body, deadline)
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Conn, data: bytes, max_body: int, deadline: float
    ) -> tuple[int, bytes]:
        answer = conn.start(loop, data, max_body)
        timer = loop.call_at(deadline, conn.expire)
        try:
            got = await answer
        finally:
            timer.cancel()
        if conn.reusable():
            self._put_idle(conn, loop.time())
        else:
            conn.close()
        return got

    async def close(self) -> None:
        for conn in self.lru:
            conn.close()
        self.idle.clear()
        self.lru.clear()
        await asyncio.sleep(0)  # let the transports finish closing
