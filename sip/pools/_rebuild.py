"""Rebuilding the pools' Redis state from the calls table after Redis lost it (principle 10).

Redis is a cache of who holds a channel; PostgreSQL's calls table is the truth. A Redis
that restarts without persistence (or is flushed) comes back with every pool looking
empty, and admitting into it would put more calls on the trunk than it has channels. So
the pools carry an epoch marker that only a rebuild writes (see `_lua`): while it is
missing, acquire refuses, one process — the holder of a short Redis lock — reads the
holders from the `HolderSource`, restores them and sets the marker in one script, and the
others wait for the marker (bounded by `rebuild_timeout`) before they admit anything.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from sip.pools import _lua
from sip.pools.errors import PoolStateUnavailable

if TYPE_CHECKING:
    from sip.pools.pool import Pool

log = structlog.get_logger(__name__)

_POLL = 0.05  # seconds between looks at the marker while another process rebuilds


@dataclass(frozen=True)
class PoolHolders:
    """Who holds a pool's permits according to the source of truth.

    `live`: on the trunk now (dialling, ringing, answered) — always restored, even past the
    pool's size, because they hold a channel whatever Redis says. `pending`: accepted with a
    permit but not dialled yet — restored only into free room, in the order given (oldest
    first), since some of them may have been waiting for a channel rather than holding one.
    """

    live: Sequence[str] = ()
    pending: Sequence[str] = ()

    def all(self) -> set[str]:
        return {*self.live, *self.pending}


HolderSource = Callable[[], Awaitable[Mapping[str, PoolHolders]]]


async def _no_holders() -> Mapping[str, PoolHolders]:
    return {}


class Rebuilder:
    """Guards one trunk's pools: `ensure()` returns once every pool's marker is present,
    rebuilding the holders first if one is not (a marker per pool: a process whose
    configuration has a pool another lacks still finds that pool unrebuilt). One rebuild at a
    time per process (an asyncio lock) and across processes (a Redis lock per trunk whose
    loss, e.g. to a second flush, voids the rebuild)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        trunk: str,
        lock_key: str,
        *,
        timeout: float,
        source: HolderSource | None = None,
    ) -> None:
        self._redis = redis
        self.trunk = trunk
        self.lock_key = lock_key
        self.timeout = timeout
        self.source: HolderSource = source or _no_holders
        self._local = asyncio.Lock()
        self.rebuilds = 0  # rebuilds this process ran (for tests and logs)

    async def ensure(self, pools: Sequence[Pool]) -> None:
        """Return when the pools' state is whole; `PoolStateUnavailable` after `timeout`."""
        markers = [pool.keys[5] for pool in pools]
        try:
            async with asyncio.timeout(self.timeout):
                async with self._local:
                    while await self._redis.exists(*markers) < len(markers):
                        token = uuid.uuid4().hex
                        lock_ms = max(1, math.ceil(self.timeout * 1000))
                        if await self._redis.set(self.lock_key, token, nx=True, px=lock_ms):
                            try:
                                await self._rebuild(pools, token)
                            finally:
                                await asyncio.shield(
                                    _lua.unlock_script(self._redis, [self.lock_key], [token])
                                )
                        else:
                            await asyncio.sleep(_POLL)  # another process is rebuilding
        except TimeoutError:
            raise PoolStateUnavailable(
                self.trunk, f"no rebuild finished within {self.timeout:g} s"
            ) from None

    async def _rebuild(self, pools: Sequence[Pool], token: str) -> None:
        started = time.monotonic()
        truth = await self.source()
        keys: list[str] = [self.lock_key]
        run_id = await server_run_id(self._redis)
        marker = f"{run_id} rebuilt {time.time():.3f} by {socket.gethostname()}:{os.getpid()}"
        args: list[Any] = [token, marker, len(pools)]
        for pool in pools:
            held = truth.get(pool.name, PoolHolders())
            keys += [pool.keys[0], pool.keys[1], pool.keys[5]]
            lease_ms = max(1, math.ceil(pool.lease * 1000))
            args += [pool.size, lease_ms, len(held.live), len(held.pending)]
            args += [*held.live, *held.pending]
        reply = await _lua.rebuild_script(self._redis, keys, args)
        if reply == 0:
            log.warning(
                "pool state rebuild voided: Redis lost our lock meanwhile", trunk=self.trunk
            )
            return
        self.rebuilds += 1
        restored = {
            pool.name: [_text(h) for h in got] for pool, got in zip(pools, reply, strict=True)
        }
        for pool in pools:
            live = len(truth.get(pool.name, PoolHolders()).live)
            if live > pool.size:
                log.error(
                    "more live calls than channels in a pool",
                    trunk=self.trunk,
                    pool=pool.name,
                    live=live,
                    size=pool.size,
                )
        await self._drop_ended(pools, restored)
        # A fresh Redis (first start) looks the same as a lost one; only restored holders
        # mean that calls outlived Redis's state.
        report = log.warning if any(restored.values()) else log.info
        report(
            "pool state was missing and is rebuilt from the calls table",
            trunk=self.trunk,
            restored={name: len(hs) for name, hs in restored.items()},
            took_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _drop_ended(self, pools: Sequence[Pool], restored: dict[str, list[str]]) -> None:
        """A call that ended between our read and the restore released a permit that did
        not exist yet: look again and give back what we restored for calls now over (else
        it would hold a channel until its lease lapsed)."""
        if not any(restored.values()):
            return
        now = await self.source()
        for pool in pools:
            still = now.get(pool.name, PoolHolders()).all()
            for holder in restored[pool.name]:
                if holder not in still:
                    await pool.release(holder)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run_id_of(info: bytes | str) -> str:
    """The `run_id` field of an `INFO server` reply: new at every start of a Redis server."""
    for line in _text(info).splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:") :].strip()
    return "unknown"


async def server_run_id(redis: aioredis.Redis) -> str:
    try:
        return str((await redis.info("server")).get("run_id", "unknown"))
    except ResponseError:  # INFO renamed away: the marker still goes with an empty restart
        return "unknown"


async def verify_epoch(conn: Any, marker_keys: Sequence[str], trunk: str) -> None:
    """Run on every new pool connection before anything else: drop a marker that another run
    of the server wrote (a restart that reloaded a snapshot, a promoted replica), so the next
    acquire rebuilds instead of trusting holders that miss the latest admissions."""
    try:
        await conn.send_command("INFO", "server")
        run_id = run_id_of(await conn.read_response())
    except ResponseError:
        return
    await conn.send_command("EVAL", _lua.CHECK_EPOCH, len(marker_keys), *marker_keys, run_id)
    if await conn.read_response():
        log.warning(
            "Redis runs anew since the pools' state was rebuilt (restart, restored snapshot or"
            " failover): rebuilding it before the next admission",
            trunk=trunk,
        )
