"""SSRF guard: save-time URL checks and dial-time resolver/literal checks.

No network beyond loopback: DNS answers for made-up names come from a patched
socket.getaddrinfo; 'localhost' resolves from /etc/hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

import pytest
import yarl

from strait_actors.httpclient import HttpClient
from strait_actors.ssrf import (
    UnsafeAddress,
    UnsafeURL,
    check_dial_target,
    check_url,
    is_blocked_ip,
    parse_strict_host,
)

BLOCKED_IPS = [
    # IPv4 ranges: first address and one inside
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255",
    "192.168.0.1", "192.168.255.255", "169.254.169.254", "100.64.0.1", "100.127.255.255",
    "0.0.0.0", "0.1.2.3", "192.0.0.1", "192.0.2.10", "192.88.99.1", "198.18.0.1", "198.19.255.255",
    "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.254",
    "255.255.255.255",
    # IPv6 ranges
    "::1", "::", "fc00::1", "fdff:ffff::1", "fe80::1", "febf::1", "fec0::1", "ff02::1",
    "2001:db8::1", "2001:2::1", "2001:10::1", "2001:1f::1", "64:ff9b::808:808", "64:ff9b:1::1",
    "2002:808:808::1",
]  # fmt: skip

EMBEDDED_IPV4 = [
    "::ffff:127.0.0.1",  # IPv4-mapped, dotted
    "::ffff:7f00:1",  # IPv4-mapped, hex
    "::127.0.0.1",  # IPv4-compatible
    "2002:7f00:1::",  # 6to4 around 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
    "::ffff:169.254.169.254",
    "::ffff:0:10.0.0.1",  # IPv4-translated
]

PUBLIC_IPS = [
    "8.8.8.8", "1.1.1.1", "11.0.0.1", "172.32.0.1", "172.15.255.255", "100.128.0.1", "192.169.0.1",
    "198.20.0.1", "223.255.255.255", "2606:4700:4700::1111", "2001:4860:4860::8888", "2001:db9::1",
    "::ffff:8.8.8.8",  # mapped public IPv4 is just that public address
]  # fmt: skip

NON_STANDARD_V4 = [
    "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1", "127.0.1", "2130706433", "017700000001",
    "127.000.0.1", "010.0.0.1", "134744072", "8.8.8.010", "1.2.3.4.5", "0x7f.1", "127.0.0.0x1",
]  # fmt: skip

BLOCKED_NAMES = [
    "localhost", "LOCALHOST", "localhost.", "api.localhost", "metadata.google.internal",
    "Metadata.Google.Internal.",
]  # fmt: skip


def _url(host: str, scheme: str = "https", port: int | None = None) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"{scheme}://{h}{'' if port is None else f':{port}'}/hook"


def _reason(url: str, **kw: Any) -> str:
    with pytest.raises(UnsafeURL) as info:
        check_url(url, allow_private=kw.pop("allow_private", False), **kw)
    return str(info.value)


# --- address classification -----------------------------------------------------


@pytest.mark.parametrize("ip", BLOCKED_IPS + EMBEDDED_IPV4)
def test_blocked_literals(ip: str) -> None:
    assert is_blocked_ip(ipaddress.ip_address(ip))
    assert _reason(_url(ip)) == "host is a private address"
    with pytest.raises(UnsafeAddress):
        check_dial_target(_url(ip, "http"))
    with pytest.raises(UnsafeAddress):
        check_dial_target(yarl.URL(_url(ip)))


@pytest.mark.parametrize("ip", PUBLIC_IPS)
def test_public_literals_allowed(ip: str) -> None:
    assert not is_blocked_ip(ipaddress.ip_address(ip))
    check_url(_url(ip, port=443), allow_private=False)
    check_url(_url(ip, "http"), allow_private=False)
    check_dial_target(_url(ip, port=443))


def test_scoped_link_local_is_blocked() -> None:
    assert is_blocked_ip(ipaddress.IPv6Address("fe80::1%eth0"))
    with pytest.raises(UnsafeAddress):
        check_dial_target("http://[fe80::1%25eth0]/")


@pytest.mark.parametrize("host", NON_STANDARD_V4)
def test_non_standard_ipv4_notation_rejected(host: str) -> None:
    assert _reason(_url(host)) == "host uses a non-standard IPv4 notation"
    with pytest.raises(UnsafeURL):
        parse_strict_host(host)
    with pytest.raises(UnsafeAddress):
        check_dial_target(_url(host))


def test_parse_strict_host() -> None:
    assert parse_strict_host("8.8.8.8") == ipaddress.IPv4Address("8.8.8.8")
    assert parse_strict_host("::1") == ipaddress.IPv6Address("::1")
    assert parse_strict_host("example.com") is None
    assert parse_strict_host("deadbeef") is None  # hex-looking names without 0x are names
    assert parse_strict_host("8.8.8.8.") == ipaddress.IPv4Address("8.8.8.8")


@pytest.mark.parametrize("host", BLOCKED_NAMES)
def test_blocked_names(host: str) -> None:
    assert _reason(_url(host)) == "host is not allowed"  # refused before any DNS lookup
    with pytest.raises(UnsafeAddress):
        check_dial_target(_url(host))


def test_fullwidth_digits_normalise_to_blocked_ip() -> None:
    assert _reason("http://１２７.０.０.１/") == "host is a private address"


# --- URL shape --------------------------------------------------------------------


@pytest.mark.parametrize("port", [80, 443, 8080, 8443, 3000, 4000, 5000, 9000])
def test_allowed_ports(port: int) -> None:
    check_url(_url("8.8.8.8", port=port), allow_private=False)
    check_url(_url("2606:4700:4700::1111", port=port), allow_private=False)


@pytest.mark.parametrize("port", [0, 1, 22, 25, 1234, 5432, 6379, 8000, 65535])
def test_other_ports_rejected(port: int) -> None:
    assert _reason(_url("8.8.8.8", port=port)) == f"port {port} is not allowed"


@pytest.mark.parametrize(
    "url",
    ["ftp://8.8.8.8/", "file:///etc/passwd", "gopher://8.8.8.8/", "javascript:alert(1)",
     "8.8.8.8/hook", "//8.8.8.8/hook", "ws://8.8.8.8/", ""],
)  # fmt: skip
def test_scheme_must_be_http(url: str) -> None:
    assert _reason(url) == "scheme must be http or https"
    assert _reason(url, allow_private=True) == "scheme must be http or https"


def test_scheme_is_case_insensitive() -> None:
    check_url("HTTPS://8.8.8.8/x", allow_private=False)


@pytest.mark.parametrize("url", ["http:///hook", "https://", "http://:80/x"])
def test_host_required(url: str) -> None:
    assert _reason(url, allow_private=True) in {"host is required", "URL is not valid"}


def test_invalid_urls() -> None:
    assert _reason("http://8.8.8.8:99999/") == "URL is not valid"
    assert _reason("http://a\\@127.0.0.1/") == "URL is not valid"


def test_length_limit() -> None:
    base = "https://8.8.8.8/"
    check_url(base + "a" * (2048 - len(base)), allow_private=False)
    assert "longer than 2048" in _reason(base + "a" * (2049 - len(base)))
    assert "longer than 2048" in _reason(base + "a" * 5000, allow_private=True)


def test_require_tls() -> None:
    check_url("https://8.8.8.8/", allow_private=False, require_tls=True)
    assert _reason("http://8.8.8.8/", require_tls=True) == "scheme must be https"
    assert _reason("http://127.0.0.1/", allow_private=True, require_tls=True) == "scheme must be https"


def test_allow_private_skips_ip_port_and_dns_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*a: Any, **k: Any) -> Any:
        raise AssertionError("allow_private must not resolve")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for url in ["http://127.0.0.1:5555/x", "http://localhost:1/", "http://[::1]/", "http://0177.0.0.1/",
                "http://worker.internal:6000/run", "https://10.0.0.5:8443/"]:  # fmt: skip
        check_url(url, allow_private=True)


def test_errors_are_standard_types() -> None:
    assert issubclass(UnsafeURL, ValueError)
    assert issubclass(UnsafeAddress, OSError)


# --- save-time DNS --------------------------------------------------------------


def _fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> None:
    def getaddrinfo(host: str, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                    flags: int = 0) -> list[Any]:  # fmt: skip
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[Any] = []
        for a in table[host]:
            if ":" in a:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port or 0), 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port or 0))))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


DNS = {
    "public.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "rebind.example": ["93.184.216.34", "10.0.0.7"],
    "v6private.example": ["93.184.216.34", "fd00::1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "meta.example": ["169.254.169.254"],
}


def test_hostname_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, DNS)
    check_url("https://public.example/hook", allow_private=False)
    check_url("http://public.example:8080/hook", allow_private=False)
    for name in ["rebind.example", "v6private.example", "mapped.example", "meta.example"]:
        assert _reason(f"https://{name}/") == "host resolves to a private address"
    assert _reason("https://nxdomain.example/") == "host cannot be resolved"
    assert _reason("https://public.example:22/") == "port 22 is not allowed"


def test_check_dial_target_does_no_dns_and_is_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*a: Any, **k: Any) -> Any:
        raise AssertionError("check_dial_target must not resolve")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = yarl.URL("https://hooks.customer.example:8443/run")
    check_dial_target(url)
    check_dial_target(str(url))
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        check_dial_target(url)
    per_call = (time.perf_counter() - start) / n
    assert per_call < 50e-6, per_call  # a few microseconds in practice; generous for slow CI


# --- dial time --------------------------------------------------------------------


def test_the_dispatch_client_refuses_a_name_with_any_private_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dial time: a name that resolved to a public address at save time may rebind to a private one."""
    _fake_dns(monkeypatch, DNS)

    async def main() -> None:
        client = HttpClient(allow_private=False)
        try:
            for name in ["rebind.example", "v6private.example", "mapped.example", "meta.example", "localhost"]:
                with pytest.raises(UnsafeAddress, match=f"blocked address for host {name}"):
                    await client.post(f"http://{name}/hook", b"{}", b"", timeout=5, max_body=10)
        finally:
            await client.close()

    asyncio.run(main())
