"""Keep customer webhook URLs off our own network (SSRF).

A URL is refused when its host is, or resolves to, an address that is not
globally routable: loopback, RFC 1918 private, link-local (cloud metadata at
169.254.169.254), CGNAT, unique-local, multicast, reserved, unspecified, or an
IPv4-mapped form of one of those. The check runs when an endpoint is created
and again on every delivery — inside the connector's resolver, on the very
addresses the connection will use, so DNS rebinding between check and
connect does not help — and redirects are never followed.
`webhooks.allow_private_targets` turns it off (tests, private deployments).
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


def address_allowed(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


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
