"""Where a call goes and how its legs are named: the route (provider + caller id), call refs."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.core.errors import Problem, ValidationFailed
from gateway.messages import repo as messages_repo
from gateway.pipeline.didcache import DidCache
from gateway.providers.contracts import (
    CallRef,
)
from gateway.providers.registry import ProviderRegistry, ProviderUnavailable
from sip import calls as sip_calls


class PoolFull(Problem):
    status, code, title = 429, "pool_exhausted", "No channel is free in this pool"


@dataclass(frozen=True)
class CallRoute:
    provider: str
    from_number: str | None


async def route_call(
    conn: asyncpg.Connection | asyncpg.Pool,
    registry: ProviderRegistry,
    tenant_id: uuid.UUID,
    from_: str | None,
    dids: DidCache | None = None,
) -> CallRoute:
    """A caller id the tenant owns decides the provider (the `dids` table); otherwise config.

    With `dids`, a caller id this process has routed before costs no round trip."""
    cfg = registry.route("voice")
    if dids is not None:
        did = await dids.did_for_sending(conn, tenant_id, "voice", from_)
    else:
        did = await messages_repo.did_for_sending(conn, tenant_id, "voice", from_)
    if from_ is not None and did is None:
        raise ValidationFailed(
            f"{from_} is not one of this tenant's numbers able to make calls",
            code="unknown_sender",
        )
    provider = did["provider"] if did is not None else cfg.primary
    if not registry.has_voice(provider):
        raise ProviderUnavailable(f"voice provider {provider!r} is not configured")
    return CallRoute(provider, did["number"] if did is not None else cfg.default_from)


_SIP_HOST = re.compile(r"^sips?:(?:[^@]+@)?(?P<host>[A-Za-z0-9.\-]+)(?::\d+)?(?:[;?].*)?$")


def sip_host(uri: str) -> str | None:
    match = _SIP_HOST.match(uri)
    return match["host"].lower() if match else None


def call_ref(call: asyncpg.Record | dict[str, Any], *, leg: str = "customer") -> CallRef:
    if leg == "agent":
        agent = call["agent"] or {}
        return CallRef(
            call["provider"],
            attempt_key_of(call),
            agent.get("leg_key"),
            agent.get("channel"),
            "agent",
        )
    return CallRef(
        call["provider"], attempt_key_of(call), call["provider_call_id"], call["channel"]
    )


def attempt_key_of(call: asyncpg.Record | dict[str, Any]) -> str:
    return sip_calls.attempt_key(call["id"], call["attempt_n"])
