"""Routing: which provider and which sender number carry a message."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from gateway.core.errors import ValidationFailed
from gateway.messages import repo
from gateway.pipeline.didcache import DidCache
from gateway.providers.registry import ProviderRegistry, ProviderUnavailable


@dataclass(frozen=True)
class Route:
    provider: str
    from_number: str | None
    fallback: str | None


async def route_message(
    conn: asyncpg.Connection | asyncpg.Pool,
    registry: ProviderRegistry,
    tenant_id: uuid.UUID,
    channel: str,
    from_number: str | None,
    dids: DidCache | None = None,
) -> Route:
    """A sender the tenant owns decides the provider (the `dids` table); otherwise config does.

    Email has no DIDs: the channel's configured provider carries it, from the address given
    or the channel's `default_from`. With `dids`, a sender this process has routed before costs
    no round trip (didcache.py)."""
    cfg = registry.route(channel)
    if channel == "email":
        return _route_email(registry, cfg.primary, cfg.fallback, from_number or cfg.default_from)
    if dids is not None:
        did = await dids.did_for_sending(conn, tenant_id, channel, from_number)
    else:
        did = await repo.did_for_sending(conn, tenant_id, channel, from_number)
    if from_number is not None and did is None:
        raise ValidationFailed(
            f"{from_number} is not one of this tenant's numbers able to send {channel}",
            code="unknown_sender",
        )
    provider = did["provider"] if did is not None else cfg.primary
    sender = did["number"] if did is not None else cfg.default_from
    if not registry.has(provider):
        raise ProviderUnavailable(f"provider {provider!r} for {channel} is not configured")
    fallback = (
        cfg.fallback
        if cfg.fallback and cfg.fallback != provider and registry.has(cfg.fallback)
        else None
    )
    return Route(provider, sender, fallback)


def _route_email(
    registry: ProviderRegistry, primary: str, fallback: str | None, sender: str | None
) -> Route:
    if sender is None:
        raise ValidationFailed(
            "no sender: give `from` or set providers.email.default_from", code="missing_sender"
        )
    if not registry.has(primary) or "email" not in registry.messaging(primary).channels:
        raise ProviderUnavailable(f"provider {primary!r} for email is not configured")
    usable = (
        fallback
        if fallback
        and fallback != primary
        and registry.has(fallback)
        and "email" in registry.messaging(fallback).channels
        else None
    )
    return Route(primary, sender, usable)
