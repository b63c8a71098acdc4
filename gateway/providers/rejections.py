"""Bounding what forged provider webhooks can write into a tenant's timeline.

A request with a bad provider signature that names one of a tenant's messages is worth one
`webhook.signature_rejected` event on that message — but anyone can send them, as fast as they
like, so at most one such event per tenant is written per window. The rest are counted in Redis
and the next event carries that count (`suppressed`: rejected requests not recorded as events
since the previous one); the metric counts every rejected request.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.redis import LuaScript

WINDOW_SECONDS = 60
_SUPPRESSED_TTL = 7 * 86400

# KEYS[1] the tenant's window marker, KEYS[2] its suppressed count; ARGV window, count ttl
_ADMIT = LuaScript(
    """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  local n = tonumber(redis.call('GET', KEYS[2])) or 0
  redis.call('DEL', KEYS[2])
  return {1, n}
end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {0, 0}
""",
    name="signature_rejection_admit",
)


@dataclass(frozen=True)
class Admission:
    record: bool  # write the event now
    suppressed: int  # rejected requests not recorded since the tenant's previous event


async def admit_event(redis: aioredis.Redis, provider: str, tenant_id: str) -> Admission:
    """Whether this rejection may be written as an event on the tenant's timeline."""
    base = f"tl:sigrej:{provider}:{tenant_id}"
    record, suppressed = await _ADMIT(
        redis, keys=(base, base + ":suppressed"), args=(WINDOW_SECONDS, _SUPPRESSED_TTL)
    )
    return Admission(bool(record), int(suppressed))
