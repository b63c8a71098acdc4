"""Live IVR sessions in Redis, with a TTL.

One key per session (`ivr:session:<id>`, JSON). Any worker may load a session and carry it on;
a save is a compare-and-set on the session's step count, so two workers that took the same
input cannot both advance it (the second is told, and re-reads). Every save renews the TTL: a
session that no one steps for `ttl` seconds (its call is long gone and nobody said so) expires
on its own. After Redis loses it (DESIGN principle 10), the worker driving an Asterisk call still
holds the whole session from its last step and puts it back (the call is in `ivr_live`, not
summarised: ivr/runner.py); a session no worker holds in memory (a Twilio call's, between two
webhooks) cannot be rebuilt: that call ends, and what happened is in the event log.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from gateway.redis import LuaScript
from ivr.engine import Session

DEFAULT_TTL = 3600
PREFIX = "ivr:session:"

# KEYS[1] session key; ARGV: expected steps of the stored copy (-1: must not exist), the new
# JSON, ttl seconds. Returns 1 when saved, 0 when someone else moved it first, 2 when the
# stored copy is gone (expired, or Redis lost it).
_CAS = LuaScript(
    """
local cur = redis.call('GET', KEYS[1])
local expected = tonumber(ARGV[1])
if expected < 0 then
  if cur then return 0 end
else
  if not cur then return 2 end
  local steps = cjson.decode(cur)['steps']
  if steps ~= expected then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
""",
    name="ivr_session_cas",
)


# KEYS[1] session key; ARGV: the steps of the copy to replace, the JSON to put back ("" to
# remove it), ttl seconds. Returns 1 when set back, 0 when the stored copy is another one.
_UNDO = LuaScript(
    """
local cur = redis.call('GET', KEYS[1])
if not cur or cjson.decode(cur)['steps'] ~= tonumber(ARGV[1]) then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
""",
    name="ivr_session_undo",
)


class SessionConflict(Exception):
    """Another worker stepped this session first."""


class SessionMissing(SessionConflict):
    """The stored copy is gone (its TTL ran out, or Redis restarted empty)."""


class SessionStore:
    def __init__(self, redis: aioredis.Redis, ttl: int = DEFAULT_TTL) -> None:
        self.redis = redis
        self.ttl = ttl

    @staticmethod
    def key(session_id: str) -> str:
        return PREFIX + session_id

    async def load(self, session_id: str) -> Session | None:
        raw = await self.redis.get(self.key(session_id))
        return None if raw is None else Session.from_json(json.loads(raw))

    async def save(self, session: Session, *, previous_steps: int | None) -> None:
        """Store `session`; `previous_steps` is the step count of the copy it was made from
        (None: a new session, which must not exist yet)."""
        body = json.dumps(session.to_json(), separators=(",", ":"))
        expected = -1 if previous_steps is None else previous_steps
        saved = await _CAS(self.redis, [self.key(session.id)], [expected, body, self.ttl])
        if saved == 2:
            raise SessionMissing(session.id)
        if not saved:
            raise SessionConflict(session.id)

    async def restore(self, saved: Session, before: Session | None) -> bool:
        """Undo the save of `saved`: put `before` back (None: remove the session), unless
        another save has replaced `saved` since. True when set back."""
        body = "" if before is None else json.dumps(before.to_json(), separators=(",", ":"))
        undone = await _UNDO(self.redis, [self.key(saved.id)], [saved.steps, body, self.ttl])
        return bool(undone)

    async def drop(self, session_id: str) -> None:
        await self.redis.delete(self.key(session_id))
