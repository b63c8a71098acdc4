"""One tracker per Asterisk across every worker process: a Redis lease, renewed while held.

Every worker keeps its own AMI connection (to send Originate/Hangup/Bridge), but only the
holder of ``tl:ami:{name}:tracker`` turns that Asterisk's events into call state and pool
releases: N trackers would write every transition N times and could trigger a failover twice.
A holder that dies loses the lease after ``ttl``; the next holder reconciles against
``CoreShowChannels`` first, which covers whatever happened in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog

from gateway.redis import LuaScript
from gateway.stopping import cancel_and_wait

log = structlog.get_logger(__name__)

_TAKE = LuaScript(
    """
local current = redis.call('GET', KEYS[1])
if current == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""",
    name="leader_take",
)
_GIVE_BACK = LuaScript(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    name="leader_give_back",
)


class LeaderLease:
    """Hold ``key`` while alive; ``on_gained`` runs each time leadership is (re)taken."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key: str,
        *,
        ttl: float = 10.0,
        on_gained: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.on_gained = on_gained
        self.holder = secrets.token_hex(8)
        self.held = False
        self._task: asyncio.Task[None] | None = None
        self._hook: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"leader:{self.key}")

    async def _run(self) -> None:
        while not self._closing:
            try:
                took = bool(
                    await _TAKE(self.redis, [self.key], [self.holder, int(self.ttl * 1000)])
                )
            except Exception as exc:  # Redis away: we cannot prove we still lead
                log.warning("leader lease check failed", key=self.key, error=repr(exc))
                took = False
            gained, self.held = took and not self.held, took
            if gained:
                log.info("tracker leadership taken", key=self.key)
                # its own task: a slow hook must not lapse us
                if self.on_gained is not None and not self._closing:
                    self._hook = asyncio.create_task(self._gained(self.on_gained))
            await asyncio.sleep(self.ttl / 3 if self.held else self.ttl / 2)

    async def _gained(self, hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except Exception:
            log.exception("leadership hook failed", key=self.key)

    async def close(self) -> None:
        """Stop renewing and give the lease back. Bounded: every renewal is a redis-py call,
        whose send can swallow a cancel (gateway/stopping.py), so the loop also stops on
        `_closing` and the task is cancelled again while it goes on."""
        self._closing = True
        await cancel_and_wait(self._task)
        if self._hook is not None:  # after the loop: it starts the hook
            self._hook.cancel()
        if self.held:
            self.held = False
            with contextlib.suppress(Exception):
                await _GIVE_BACK(self.redis, [self.key], [self.holder])
