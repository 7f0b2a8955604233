"""SSRF guard for user-supplied endpoint and webhook URLs.

A URL is checked twice: when it is saved (`check_url`) and again on every outbound
connect, because a name that resolved to a public address at save time can later
resolve to an internal one (DNS rebinding). At dial time the dispatch client
(`httpclient.HttpClient`) refuses a blocked name or IP literal with `check_dial_target`
and then every address the name resolves to with `is_blocked_ip`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Any, Final

import yarl

__all__ = (
    "UnsafeAddress",
    "UnsafeURL",
    "check_dial_target",
    "check_url",
    "is_blocked_ip",
    "parse_strict_host",
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURL(ValueError):
    """A URL refused at save time; str() is a short reason fit for a 422 detail."""


class UnsafeAddress(OSError):
    """A connect refused at dial time. An OSError so aiohttp wraps it as a connector error."""


MAX_URL_LENGTH: Final = 2048
ALLOWED_PORTS: Final = frozenset({80, 443, 8080, 8443, 3000, 4000, 5000, 9000})
_BLOCKED_NAMES: Final = frozenset({"localhost", "metadata.google.internal"})

_V4_BLOCKED: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
        "100.64.0.0/10", "0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "255.255.255.255/32",
    )
)  # fmt: skip
_V6_BLOCKED: Final = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::1/128", "::/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32",
        "2001:2::/48", "2001:10::/28", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16",
    )
)  # fmt: skip
# Prefixes whose low 32 bits are an IPv4 address the packet can end up at.
_V4_IN_LOW_BITS: Final = tuple(
    ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")

# WHATWG URL rule: a host whose last label is a number is parsed as IPv4 by browsers
# and by inet_aton (so getaddrinfo("127.1") is 127.0.0.1); only dotted-quad is accepted.
_NUMERIC_LABEL: Final = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)

# Same flags as aiohttp's ThreadedResolver.
_AI_ADDRCONFIG: Final = socket.AI_ADDRCONFIG & getattr(socket, "AI_MASK", ~0)
_NUMERIC_FLAGS: Final = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside a mapped/compatible/NAT64/6to4 IPv6 address."""
    for net in _V4_IN_LOW_BITS:
        if ip in net:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:  # 2002:AABB:CCDD::/48 -> AA.BB.CC.DD
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def is_blocked_ip(ip: IPAddress) -> bool:
    """True if `ip` (or the IPv4 address embedded in it) is loopback/private/reserved."""
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _V4_BLOCKED)
    ip = ipaddress.IPv6Address(int(ip))  # drop any %scope so range tests compare bits only
    v4 = embedded_ipv4(ip)
    if v4 is not None and is_blocked_ip(v4):
        return True
    return any(ip in net for net in _V6_BLOCKED)


def parse_strict_host(host: str) -> IPAddress | None:
    """The IP of an IP-literal host, None for a DNS name.

    Raises UnsafeURL for numeric hosts that are not a canonical dotted quad (0177.0.0.1,
    0x7f.1, 127.1, 2130706433 ...) since resolvers and browsers read them as IPv4.
    """
    name = host.rstrip(".")
    if ":" in name:  # only IPv6 literals contain a colon once yarl has split off the port
        try:
            return ipaddress.IPv6Address(name.split("%", 1)[0].strip("[]"))
        except ValueError:
            raise UnsafeURL("host is not a valid IPv6 address") from None
    if _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        try:
            return ipaddress.IPv4Address(name)  # rejects octal, hex, short forms, leading zeros
        except ValueError:
            raise UnsafeURL("host uses a non-standard IPv4 notation") from None
    return None


@functools.lru_cache(maxsize=4096)
def _host_verdict(host: str) -> tuple[IPAddress | None, str | None]:
    """(literal IP or None, reason to refuse or None) for a host as yarl spells it; no DNS.

    Cached: the dispatcher asks for every request and hosts repeat.
    """
    name = host.rstrip(".").lower()
    if name in _BLOCKED_NAMES or name.endswith(".localhost"):
        return None, "host is not allowed"
    try:
        ip = parse_strict_host(name)
    except UnsafeURL as exc:
        return None, str(exc)
    if ip is not None and is_blocked_ip(ip):
        return ip, "host is a private address"
    return ip, None


def _sockaddr_ip(sockaddr: tuple[Any, ...]) -> IPAddress:
    return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])


def check_url(url: str, *, allow_private: bool, require_tls: bool = False) -> None:
    """Validate an endpoint/webhook URL at save time; raises UnsafeURL with a short reason.

    With allow_private only the shape is checked (scheme, host, length, TLS), for
    self-hosted setups whose workers live on the private network.
    Resolves hostnames with blocking getaddrinfo: call it off the event loop.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = yarl.URL(url)  # yarl, because aiohttp dials what yarl parses
        port = parsed.explicit_port
    except (ValueError, TypeError):
        raise UnsafeURL("URL is not valid") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeURL("scheme must be http or https")
    host = parsed.host
    if not host:
        raise UnsafeURL("host is required")
    if require_tls and parsed.scheme != "https":
        raise UnsafeURL("scheme must be https")
    if allow_private:
        return
    ip, reason = _host_verdict(host)
    if reason is not None:
        raise UnsafeURL(reason)
    if port is not None and port not in ALLOWED_PORTS:
        raise UnsafeURL(f"port {port} is not allowed")
    if ip is not None:
        return
    try:
        infos = socket.getaddrinfo(host, parsed.port or 0, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise UnsafeURL("host cannot be resolved") from None
    # ANY blocked address: a name with one public and one private record is a rebinding setup
    if not infos or any(is_blocked_ip(_sockaddr_ip(info[4])) for info in infos):
        raise UnsafeURL("host resolves to a private address")


def check_dial_target(url: yarl.URL | str) -> None:
    """Refuse a request whose host is a blocked IP literal or name; no DNS, cached per host."""
    host = (url if isinstance(url, yarl.URL) else yarl.URL(url)).host
    if not host:
        raise UnsafeAddress("blocked address for host ''")
    reason = _host_verdict(host)[1]
    if reason is not None:
        raise UnsafeAddress(f"blocked address for host {host}: {reason}")
