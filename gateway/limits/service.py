"""The limits the chain applies to one tenant and key, with what is left in their buckets now."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from gateway.limits.schemas import FrequencyCapInfo, Limits, RateLimitInfo
from gateway.tenants.service import Principal
from guardrails import ratelimit
from guardrails.policy import GuardrailPolicy


async def limits_for(
    principal: Principal, policy: GuardrailPolicy, db: asyncpg.Pool, redis: aioredis.Redis
) -> Limits:
    tenant_limit = policy.tenant_limit(principal.tenant_name, "tenant")
    key_limit = policy.tenant_limit(principal.tenant_name, "api_key")
    peek = await ratelimit.hit(
        redis,
        [
            ratelimit.Bucket(
                "tenant",
                f"tl:rl:tenant:{principal.tenant_id}",
                tenant_limit.rate,
                tenant_limit.burst,
            ),
            ratelimit.Bucket(
                "api_key", f"tl:rl:key:{principal.key_id}", key_limit.rate, key_limit.burst
            ),
        ],
        member="peek",
        dry_run=True,
    )
    rows = [
        RateLimitInfo(
            limit="tenant",
            applies_to="every action of your tenant",
            rate=tenant_limit.rate,
            burst=tenant_limit.burst,
            remaining=peek.buckets[0]["remaining"],
        ),
        RateLimitInfo(
            limit="api_key",
            applies_to="every action asked for with this API key",
            rate=key_limit.rate,
            burst=key_limit.burst,
            remaining=peek.buckets[1]["remaining"],
        ),
        RateLimitInfo(
            limit="sender",
            applies_to="each sending number (default)",
            rate=policy.limits.sender.rate,
            burst=policy.limits.sender.burst,
        ),
    ]
    if policy.limits.senders:
        own = {
            r["number"]
            for r in await db.fetch(
                "SELECT number FROM dids WHERE tenant_id = $1 AND number = ANY($2::text[])",
                principal.tenant_id,
                list(policy.limits.senders),
            )
        }
        rows += [
            RateLimitInfo(
                limit="sender", applies_to=f"sending number {n}", rate=lim.rate, burst=lim.burst
            )
            for n, lim in sorted(policy.limits.senders.items())
            if n in own
        ]
    rows.append(
        RateLimitInfo(
            limit="destination",
            applies_to="each destination number, for your tenant",
            rate=policy.limits.destination.rate,
            burst=policy.limits.destination.burst,
        )
    )
    rows += [
        RateLimitInfo(
            limit="provider_cps",
            applies_to=f"provider {name} (shared by every tenant)",
            rate=cps,
            burst=max(1, int(cps)),
        )
        for name, cps in sorted(policy.limits.provider_cps.items())
    ]
    rules = policy.rules
    caps = [
        FrequencyCapInfo(
            rule=r.id,
            citation=r.frequency_cap.citation,
            states=sorted(r.states),
            max=r.frequency_cap.max,
            window_hours=r.frequency_cap.window_hours,
            scope=r.frequency_cap.scope,
            counted="per_number",
            channels=sorted(r.frequency_cap.channels),
            purposes=sorted(r.frequency_cap.purposes),
        )
        for r in rules.hours_rules
        if r.frequency_cap is not None
    ]
    return Limits(
        checks=list(policy.checks),
        rules_version=rules.version,
        exempt_transactional_from_calling_hours=policy.for_tenant(
            principal.tenant_name
        ).exempt_transactional_from_calling_hours,
        rate_limits=rows if "rate_limits" in policy.checks else [],
        frequency_caps=caps if "rate_limits" in policy.checks else [],
    )
