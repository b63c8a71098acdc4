"""Which worker runs an Asterisk IVR call: a lease per call in Redis, renewed by its holder.

Every worker's AMI connection sees every AsyncAGIStart. The first to `claim` the call's
Uniqueid drives it and renews the lease every third of its length; a worker killed mid-call
stops renewing, the lease lapses, and another worker claims the call and carries its session
on from Redis (ivr/asyncagi.py `_resume`). The session id is remembered next to the lease.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from gateway.redis import LuaScript

_RENEW = LuaScript(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end",
    name="ivr_lease_renew",
)
_RELEASE = LuaScript(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
    "else return 0 end",
    name="ivr_lease_release",
)
SESSION_TTL = 6 * 3600


class RedisCallLease:
    def __init__(self, redis: aioredis.Redis, seconds: float = 10.0) -> None:
        self.redis = redis
        self.seconds = seconds
        self.token = uuid.uuid4().hex  # this worker

    def _key(self, uniqueid: str) -> str:
        return f"ivr:agi:lease:{uniqueid}"

    async def claim(self, uniqueid: str) -> bool:
        ms = int(self.seconds * 1000)
        return bool(await self.redis.set(self._key(uniqueid), self.token, nx=True, px=ms))

    async def renew(self, uniqueid: str) -> bool:
        ms = int(self.seconds * 1000)
        return bool(await _RENEW(self.redis, [self._key(uniqueid)], [self.token, ms]))

    async def release(self, uniqueid: str) -> None:
        await _RELEASE(self.redis, [self._key(uniqueid)], [self.token])

    async def remember(self, uniqueid: str, session_id: str) -> None:
        await self.redis.set(f"ivr:agi:session:{uniqueid}", session_id, ex=SESSION_TTL)

    async def session_of(self, uniqueid: str) -> str | None:
        raw = await self.redis.get(f"ivr:agi:session:{uniqueid}")
        return raw.decode() if raw is not None else None
