"""Keep customer webhook URLs off our own network (SSRF).

A URL is refused when its host is, or resolves to, an address that is not
globally routable: loopback, RFC 1918 private, link-local (cloud metadata at
169.254.169.254), CGNAT, unique-local, multicast, reserved, unspecified — or an
IPv6 address that carries one of those IPv4 addresses inside it and is turned
back into it on the way: IPv4-mapped (``::ffff:a.b.c.d``), IPv4-translated
(``::ffff:0:a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``) and 6to4 (``2002:AABB:CCDD::``)
are judged by the IPv4 address they embed; the local-use NAT64 prefix
(``64:ff9b:1::/48``) and the deprecated IPv4-compatible form (``::a.b.c.d``) are
refused whole. The check runs when an endpoint is created and again on every
delivery — inside the connector's resolver, on the very addresses the
connection will use, so DNS rebinding between check and connect does not
help — and redirects are never followed. `webhooks.allow_private_targets` turns
it off (tests, private deployments).

A numeric host is read the way the connection will read it. ``127.1``,
``2130706433``, ``0x7f.0.0.1`` or ``0177.0.0.1`` all mean 127.0.0.1 to the C
library's ``inet_aton`` (and so to ``getaddrinfo``), while aiohttp refuses the
all-digit ones outright; so any IPv4 address not written as a canonical
``a.b.c.d`` is refused as a malformed URL, at creation and at delivery, whatever
``allow_private_targets`` says.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(OSError):
    """The URL points somewhere webhooks may not go (an OSError so the connector passes it on)."""


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215, local use
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated (also :: and ::1)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for on the way (mapped, translated, NAT64,
    6to4), or None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64 or ip in IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_allowed(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in NAT64_LOCAL or ip in IPV4_COMPATIBLE:
            return False
        ip = embedded_ipv4(ip) or ip
    # is_reserved too: Python 3.11 counts e.g. ::/8 outside the listed blocks as global
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _literal(host: str) -> IPAddress | None:
    """The address a numeric host names, read as the connection will read it; None for a name.

    Raises TargetRefused for an IPv4 address not written as a canonical a.b.c.d (``127.1``,
    ``2130706433``, ``0x7f.1``, ``127.0.0.1.``): what it means differs between parsers."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if ":" in bare:  # aiohttp takes any host with a colon for an IPv6 literal
        raise TargetRefused(f"{host} is not a valid IPv6 address")
    try:
        socket.inet_aton(bare[:-1] if bare.endswith(".") else bare)
    except OSError:
        return None  # a name
    raise TargetRefused(f"{host} is not an IPv4 address in the a.b.c.d form")


def check_url_shape(url: str) -> tuple[str, int]:
    """Scheme and host sanity (no resolution); returns (host, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("the URL must be http:// or https://")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("credentials in the URL are not allowed; put a secret in the path")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused("the URL's port is not valid") from None
    _literal(parts.hostname)  # a non-canonical numeric host is malformed, in every mode
    return parts.hostname, port


async def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a URL whose host is or resolves to a non-public address.

    A host that does not resolve (yet) is accepted: every delivery checks again.
    """
    host, port = check_url_shape(url)
    if allow_private:
        return
    literal = _literal(host)
    if literal is not None:
        if not address_allowed(literal):
            raise TargetRefused(f"{host} is not a public address")
        return
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        raise TargetRefused(f"{host} is a loopback name")
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5
        )
    except (OSError, TimeoutError):
        return
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if not address_allowed(ip):
            raise TargetRefused(f"{host} resolves to {ip}, which is not a public address")


def check_literal_host(url: str, *, allow_private: bool) -> None:
    """IP-literal hosts skip the resolver, so the delivery path checks them here."""
    host, _ = check_url_shape(url)
    literal = _literal(host)
    if not allow_private and literal is not None and not address_allowed(literal):
        raise TargetRefused(f"{host} is not a public address")


class GuardedResolver(AbstractResolver):
    """The default resolver, minus every address webhooks may not reach."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if address_allowed(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise TargetRefused(f"{host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def resolver_for(allow_private: bool) -> Any:
    return DefaultResolver() if allow_private else GuardedResolver()
