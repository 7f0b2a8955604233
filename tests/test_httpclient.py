"""The dispatch HTTP client against real sockets: framing, caps, keep-alive, failures, the guard."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from strait_actors import httpclient, ssrf
from strait_actors.httpclient import ConnectionFailed, HttpClient, HttpError, encode_headers, parse_target

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"  # the answer most test servers give


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def _serve(
    script: Script,
    test: Callable[[str], Awaitable[None]],
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run,
) -> None:
    """Run a raw TCP server with `script` per connection, then the client-side test against it, on
    the loop `run` makes (asyncio's; `uvloop.run` for the worker's)."""

    async def go() -> None:
        handlers: list[asyncio.Task[None]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                await script(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await test(f"http://127.0.0.1:{port}/job?x=1")
        finally:
            server.close()
            await server.wait_closed()
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

    run(go())


Respond = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def _keep_alive(respond: Respond, opened: list[None]) -> Script:
    """A keep-alive server script: each connection it serves is counted in `opened`, and `respond`
    answers each request by its head, until the client closes the connection."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(None)
        while True:
            try:
                head, _ = await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            await respond(head, writer)

    return script


def test_keep_alive_reuses_one_connection_and_sends_the_request_verbatim() -> None:
    seen: list[tuple[bytes, bytes]] = []
    connections = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            try:
                seen.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}')
        writer.close()

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        for i in range(3):
            status, body = await client.post(
                url, b'{"n":%d}' % i, encode_headers({"X-Run-ID": "r"}), timeout=5, max_body=1000
            )
            assert (status, body) == (200, b'{"ok":true}')
        await client.close()

    _serve(script, test)
    assert len(connections) == 1
    head, body = seen[0]
    assert head.startswith(b"POST /job?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nContent-Length: 7\r\n" in head and b"\r\nX-Run-ID: r\r\n" in head
    assert body == b'{"n":0}'


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world",  # delimited by the end of the connection
    ],
)
def test_chunked_and_eof_delimited_bodies(reply: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        assert await client.post(url, b"{}", b"", timeout=5, max_body=1000) == (200, b"hello world")
        await client.close()

    _serve(script, test)


def test_body_is_capped_and_the_status_still_counts() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000)
        await writer.drain()
        writer.close()

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        status, body = await client.post(url, b"{}", b"", timeout=5, max_body=10)
        assert (status, body) == (503, b"x" * 10)
        assert not client.idle.get(parse_target(url).key), "a connection past the cap is not reused"
        await client.close()

    _serve(script, test)


def test_a_stale_pooled_connection_is_retried_once_on_a_new_one() -> None:
    count = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()  # the server drops keep-alive connections after one answer

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
        await asyncio.sleep(0.05)
        assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
        await client.close()

    _serve(script, test)
    assert count == 2


def test_timeout_refused_and_broken_answers() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _read_request(reader)
        if b"/garbage" in head:
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif b"/cut" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
        else:
            await asyncio.sleep(5)
        await writer.drain()
        writer.close()

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        base = url.split("/job")[0]
        with pytest.raises(TimeoutError):
            await client.post(url, b"{}", b"", timeout=0.2, max_body=10)
        with pytest.raises(ConnectionFailed):
            await client.post(f"{base}/cut", b"{}", b"", timeout=5, max_body=100)
        with pytest.raises(Exception, match="invalid HTTP response"):
            await client.post(f"{base}/garbage", b"{}", b"", timeout=5, max_body=100)
        with pytest.raises(ConnectionFailed):
            await client.post("http://127.0.0.1:1/x", b"{}", b"", timeout=5, max_body=100)
        await client.close()

    _serve(script, test)


def test_a_call_on_a_kept_connection_keeps_its_deadline() -> None:
    """A kept connection's exchange is timed by a timer on the loop, not `asyncio.timeout`: the second
    call, which gets no answer, fails at its deadline, and its connection is not used again."""
    opened: list[None] = []

    async def respond(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/slow" in head:
            await asyncio.sleep(10)
        writer.write(OK)

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        loop = asyncio.get_running_loop()
        assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
        began = loop.time()
        with pytest.raises(TimeoutError):
            await client.post(url.replace("/job", "/slow"), b"{}", b"", timeout=0.2, max_body=10)
        assert 0.19 <= loop.time() - began < 1.0
        assert client.open_counts()[0] == 0, "the connection that timed out is gone"
        assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
        assert len(opened) == 2
        await client.close()

    _serve(_keep_alive(respond, opened), test)


def test_a_connection_that_answers_twice_is_not_used_again() -> None:
    """The response parser goes on from one answer to the next on a kept connection, so a second
    answer nobody asked for (in the same packet, or later while the connection is idle) must never
    reach the next call: that connection is closed, and each call gets its own answer."""
    opened: list[None] = []

    def answer(text: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)

    # the start of an answer: a parser left inside it would read the next answer as its body
    STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\nstray"

    async def respond(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/twice" in head:
            writer.write(answer(b"first") + STRAY)  # one write: likely one packet
        elif b"/later" in head:
            writer.write(answer(b"later"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(STRAY)  # to a connection the client holds idle
        else:
            writer.write(answer(b"fresh"))

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        base = url.split("/job")[0]
        assert await client.post(f"{base}/twice", b"{}", b"", timeout=5, max_body=10) == (200, b"first")
        assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"fresh")
        assert len(opened) == 2
        assert await client.post(f"{base}/later", b"{}", b"", timeout=5, max_body=10) == (200, b"later")
        assert len(opened) == 2, "the kept connection answered"
        (kept,) = client.idle[parse_target(url).key]
        for _ in range(200):  # until the stray answer reaches the idle connection
            if kept.closed:
                break
            await asyncio.sleep(0.01)
        assert kept.closed, "an idle connection the server talked on is closed"
        assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"fresh")
        assert len(opened) == 3
        await client.close()

    _serve(_keep_alive(respond, opened), test)


def test_the_guard_blocks_private_addresses_on_connect() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async def test(url: str) -> None:
        guarded = HttpClient(allow_private=False)
        for target in (url, url.replace("127.0.0.1", "localhost"), "http://[::ffff:127.0.0.1]:9/x"):
            with pytest.raises(ssrf.UnsafeAddress):
                await guarded.post(target, b"{}", b"", timeout=5, max_body=10)
        await guarded.close()

    _serve(script, test)


def test_header_values_cannot_inject_headers_and_urls_are_checked() -> None:
    assert encode_headers({"X-Previous-Error": "a\r\nX-Evil: 1"}) == b"X-Previous-Error: a  X-Evil: 1\r\n"
    with pytest.raises(ValueError):
        parse_target("ftp://example.com/")
    assert parse_target("https://user:pw@example.com/p").request_line_head == (
        b"POST /p HTTP/1.1\r\nHost: example.com\r\nAuthorization: Basic dXNlcjpwdw==\r\n"
    )


def test_an_endless_header_or_too_many_headers_fail_the_attempt_with_bounded_memory() -> None:
    sent = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        head, _ = await _read_request(reader)
        if b"/many" in head:
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"Content-Length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            while sent < 50 * 2**20:  # an endpoint that never ends its header line
                writer.write(b"a" * 65536)
                sent += 65536
                await writer.drain()
        except ConnectionError:
            pass  # the client hung up: what we sent is what the socket buffers took

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        with pytest.raises(HttpError, match="response headers exceed"):
            await client.post(url, b"{}", b"", timeout=10, max_body=10)
        # the client hung up long before the 50 MiB; the rest of what was sent sat in socket buffers
        assert sent < 16 * 2**20, f"the endpoint sent {sent} bytes of one header before the client gave up"
        with pytest.raises(HttpError, match="response headers exceed 100 headers"):
            await client.post(url.replace("/job", "/many"), b"{}", b"", timeout=10, max_body=10)
        await client.close()

    _serve(script, test)


@pytest.mark.parametrize(("calls", "connections"), [(6, 6), (0, 10)])
def test_a_client_keeps_as_many_idle_sockets_as_it_makes_calls_at_once(
    monkeypatch: pytest.MonkeyPatch, calls: int, connections: int
) -> None:
    """Two waves of 6 calls at once to one host. A client told it makes up to 6 keeps all 6 sockets
    the first wave's answers free, and the second wave dials none; one told nothing keeps
    MAX_IDLE_PER_HOST (2 here) and dials 4 again."""
    monkeypatch.setattr(httpclient, "MAX_IDLE_PER_HOST", 2)
    monkeypatch.setattr(httpclient, "MAX_IDLE_TOTAL", 2)
    opened: list[None] = []
    waiting: list[asyncio.Event] = []

    async def respond(head: bytes, writer: asyncio.StreamWriter) -> None:
        answer = asyncio.Event()
        waiting.append(answer)
        if len(waiting) % 6 == 0:  # a whole wave is in: answer it, so all 6 were open at once
            for event in waiting[-6:]:
                event.set()
        await answer.wait()
        writer.write(OK)

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True, calls=calls)
        for _ in range(2):
            posts = [client.post(url, b"{}", b"", timeout=10, max_body=10) for _ in range(6)]
            assert await asyncio.gather(*posts) == [(200, b"ok")] * 6
        assert len(opened) == connections
        assert client.open_counts()[0] == min(6, max(2, calls))
        await client.close()

    _serve(_keep_alive(respond, opened), test)


def test_idle_sockets_are_capped_across_hosts_expired_and_connect_gates_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpclient, "MAX_IDLE_TOTAL", 3)

    handlers: list[asyncio.Task[None]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                await _read_request(reader)
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    async def go() -> None:
        servers = [await asyncio.start_server(script, "127.0.0.1", 0) for _ in range(5)]
        urls = [f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/job" for srv in servers]
        client = HttpClient(allow_private=True)
        try:
            conns = []
            for url in urls:  # five hosts, one keep-alive socket each
                assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
                conns.append(client.idle[parse_target(url).key][0])
            assert client.open_counts() == (3, 3, 0), "at most 3 idle in all, no gate left behind"
            assert [c.closed for c in conns] == [True, True, False, False, False], "the oldest were evicted"
            # an idle socket past IDLE_TTL is closed by the next sweep, not kept or reused
            for conn in conns[2:4]:
                conn.idle_since -= httpclient.IDLE_TTL + 1
            client.next_sweep = 0.0
            assert await client.post(urls[4], b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
            assert conns[2].closed and conns[3].closed and not conns[4].closed
            assert client.open_counts() == (1, 1, 0)
        finally:
            await client.close()
            await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
            for srv in servers:
                srv.close()
                await srv.wait_closed()

    asyncio.run(go())


async def _accept(listener: socket.socket, count: int | None) -> None:
    """Accept `count` connections on `listener` (None: until cancelled); answer each request with
    200 and close (a connection that sends nothing is closed when it goes)."""
    loop = asyncio.get_running_loop()

    async def answer(conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        try:
            await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    answering: set[asyncio.Task[None]] = set()
    while count is None or count > 0:
        conn, _ = await loop.sock_accept(listener)
        task = asyncio.create_task(answer(conn))
        answering.add(task)
        task.add_done_callback(answering.discard)
        count = None if count is None else count - 1
    await asyncio.gather(*answering)


@pytest.mark.parametrize("redial", [True, False])
def test_a_connect_whose_syn_an_overflowing_endpoint_dropped_dials_again(
    monkeypatch: pytest.MonkeyPatch, redial: bool
) -> None:
    """An endpoint whose accept queue is full drops a new connection's SYN, and the kernel sends it
    again only after a second. The client dials again after a few times the host's usual connect
    time instead: once the endpoint accepts again (0.3 s here), the call is answered within a few
    tries (about 0.4 s), not at the kernel's second try (1 s). Without dialling again it takes the
    second: the queue was full."""
    if not redial:  # a try waits up to 30 s: the kernel's own SYN retransmit comes first
        monkeypatch.setattr(httpclient, "DIAL_PATIENCE", 10**6)
        monkeypatch.setattr(httpclient, "DIAL_MAX", 30.0)

    async def go() -> float:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # an accept queue of one connection
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/job"
        server = asyncio.create_task(_accept(listener, 1))
        told: list[None] = []
        client = HttpClient(allow_private=True, on_redial=lambda: told.append(None))
        filler = socket.socket()
        try:
            assert (await client.post(url, b"{}", b"", timeout=5, max_body=100))[0] == 200  # learns the host
            await server  # accepts no more
            filler.setblocking(False)
            await loop.sock_connect(filler, listener.getsockname())  # fills the accept queue
            began = loop.time()
            call = asyncio.create_task(client.post(url, b"{}", b"", timeout=5, max_body=100))
            await asyncio.sleep(0.3)
            assert not call.done(), "the endpoint accepts nothing yet"
            server = asyncio.create_task(_accept(listener, None))
            assert (await call)[0] == 200
            took = loop.time() - began
            assert (client.redials >= 1) is redial and len(told) == client.redials
            return took
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
            filler.close()
            listener.close()
            await client.close()

    took = asyncio.run(go())
    if redial:
        assert took < 0.7, f"answered {took:.2f} s after the call began: the SYN was not dialled again"
    else:
        assert took >= 0.95, f"answered after {took:.2f} s without dialling again: the queue was not full"


def test_an_ip_address_is_dialled_without_a_resolver() -> None:
    """The guard resolves a host once (`_address`); the dial takes its answer as it is, IPv4 or
    IPv6, and leaves names and scoped IPv6 addresses to getaddrinfo."""
    tcp = (socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
    assert httpclient._ip_literal("10.1.2.3", 80) == [(socket.AF_INET, *tcp, ("10.1.2.3", 80))]
    assert httpclient._ip_literal("2001:db8::1", 443) == [(socket.AF_INET6, *tcp, ("2001:db8::1", 443, 0, 0))]
    assert httpclient._ip_literal("example.com", 80) == []
    assert httpclient._ip_literal("fe80::1%eth0", 80) == []


def test_a_socket_idle_for_a_minute_is_reused_and_one_idle_past_idle_ttl_is_not() -> None:
    """engine.md §3.2: idle connections live 90 s, so a job that fires every minute keeps its
    endpoint's socket (and, for https, its TLS session) instead of connecting each time."""
    opened: list[None] = []

    async def ok(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        key = parse_target(url).key
        try:
            assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
            conn = client.idle[key][0]
            conn.idle_since -= 60  # a minute of quiet
            assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
            assert len(opened) == 1 and client.idle[key] == [conn] and not conn.closed
            conn.idle_since -= httpclient.IDLE_TTL + 1
            assert await client.post(url, b"{}", b"", timeout=5, max_body=10) == (200, b"ok")
            assert len(opened) == 2 and conn.closed, "a socket idle past IDLE_TTL is closed, not reused"
        finally:
            await client.close()

    _serve(_keep_alive(ok, opened), test)


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_a_tls_handshake_the_endpoint_never_answers_fails_at_the_handshake_limit(
    monkeypatch: pytest.MonkeyPatch, use_uvloop: bool
) -> None:
    """The handshake has its own limit (engine.md §3.2: 10 s, shortened here), inside the call's
    deadline: a server that takes the TCP connection and never speaks TLS fails the attempt."""
    monkeypatch.setattr(httpclient, "TLS_HANDSHAKE_SECS", 0.3)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the ClientHello, answers nothing, until the client goes

    async def test(url: str) -> None:
        client = HttpClient(allow_private=True)
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            with pytest.raises(ConnectionFailed):
                await client.post(url.replace("http://", "https://"), b"{}", b"", timeout=10, max_body=10)
            assert loop.time() - began < 5, "the handshake limit ended the call, not the call's deadline"
        finally:
            await client.close()

    _serve(silent, test, uvloop.run if use_uvloop else asyncio.run)
