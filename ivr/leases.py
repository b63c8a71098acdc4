"""Which worker runs an Asterisk IVR call: a lease per call in Redis, renewed by its holder.

Every worker's AMI connection sees every AsyncAGIStart. The first to `claim` the call's
Uniqueid drives it and renews the lease every third of its length; a worker killed mid-call
stops renewing, the lease lapses, and another worker claims the call and carries its session
on from Redis (ivr/asyncagi.py `_resume`).

A claimed call is also listed in one Redis hash (Uniqueid → channel, session id): a worker
that was not up when the call arrived — the one systemd starts in place of the one killed —
finds it there, not only a worker whose connection saw the AsyncAGIStart. The owner removes
it when the call is over.

The lease's token starts with the worker's pid (`<pid>:<random>`), so an operator (and the
kill -9 test) can tell which process drives a call. A renewal that finds the lease gone
(Redis restarted empty) takes it again: the worker still drives the call.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.redis import LuaScript

# 1: renewed; 2: the key was gone (Redis lost it) and is ours again; 0: another worker has it.
_RENEW = LuaScript(
    """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
""",
    name="ivr_lease_renew",
)
# The call is over: off the list whoever holds the lease now (it may have lapsed under load),
# and the lease deleted if it is still ours.
_RELEASE = LuaScript(
    "redis.call('HDEL', KEYS[2], ARGV[2]) "
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
    "else return 0 end",
    name="ivr_lease_release",
)
LIVE_KEY = "ivr:agi:calls"
LIVE_TTL = 6 * 3600  # the list outlives any call; a restart of every worker cannot strand it


@dataclass(frozen=True)
class LiveCall:
    uniqueid: str
    channel: str
    session_id: str | None


class RedisCallLease:
    def __init__(self, redis: aioredis.Redis, seconds: float = 10.0) -> None:
        self.redis = redis
        self.seconds = seconds
        self.token = f"{os.getpid()}:{uuid.uuid4().hex}"  # this worker

    @staticmethod
    def key(uniqueid: str) -> str:
        return f"ivr:agi:lease:{uniqueid}"

    def _ms(self) -> int:
        return max(1, int(self.seconds * 1000))

    async def claim(self, uniqueid: str) -> bool:
        return bool(await self.redis.set(self.key(uniqueid), self.token, nx=True, px=self._ms()))

    async def renew(self, uniqueid: str) -> bool:
        return bool(await _RENEW(self.redis, [self.key(uniqueid)], [self.token, self._ms()]))

    async def holders(self, uniqueids: list[str]) -> list[str | None]:
        """Who holds each call's lease (None: nobody), in one MGET."""
        if not uniqueids:
            return []
        got = await self.redis.mget([self.key(u) for u in uniqueids])
        return [None if v is None else _text(v) for v in got]

    async def release(self, uniqueid: str) -> None:
        await _RELEASE(self.redis, [self.key(uniqueid), LIVE_KEY], [self.token, uniqueid])

    async def remember(self, uniqueid: str, channel: str, session_id: str | None) -> None:
        """List the call (and its session, once it has one) for any worker to take over."""
        value = json.dumps({"channel": channel, "session": session_id})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(LIVE_KEY, uniqueid, value)
            pipe.expire(LIVE_KEY, LIVE_TTL)
            await pipe.execute()

    async def live(self) -> list[LiveCall]:
        """Every call some worker claimed and has not finished (one HGETALL)."""
        out: list[LiveCall] = []
        for uid, raw in (await self.redis.hgetall(LIVE_KEY)).items():
            try:
                data = json.loads(raw)
                out.append(LiveCall(_text(uid), str(data["channel"]), data.get("session")))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def session_of(self, uniqueid: str) -> str | None:
        raw = await self.redis.hget(LIVE_KEY, uniqueid)
        if raw is None:
            return None
        try:
            session = json.loads(raw).get("session")
        except (ValueError, AttributeError):
            return None
        return str(session) if session else None

    async def forget(self, uniqueid: str) -> None:
        """A listed call whose channel is gone (nobody could end it): off the list."""
        await self.redis.hdel(LIVE_KEY, uniqueid)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
