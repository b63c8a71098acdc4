"""SIP trunk channel pools: Redis counting semaphores with leases and a fair FIFO wait.

A permit belongs to a holder id (normally the call id), not to a process: the worker
that originates a call takes the permit and whichever worker sees the Hangup releases
it by the same id. Holder ids must be unique per acquisition; acquiring again with an
id that already holds a permit refreshes that permit instead of taking a second one
(so a retried acquire cannot leak a channel).

Waiting: `acquire(holder, timeout=…)` queues a ticket in Redis. Permits freed by a
release, a lapsed lease or `reconcile` are handed to the queue head inside the same
script, and the head's process is woken through pub/sub. A waiter also sets one timer
for the earliest lease expiry so that a permit freed by a crashed holder is reclaimed
without anyone polling.

Losing Redis (a restart without persistence, a flush) loses every holder with the epoch
marker: until one process has rebuilt the holders from the source of truth (`rebuild_from`,
the calls table in the daemon), acquire does not admit — see `_rebuild`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog

from sip.pools import _lua
from sip.pools._rebuild import HolderSource, Rebuilder, verify_epoch
from sip.pools._transport import ScriptBatcher, Waiter, Waker
from sip.pools.config import PoolConfig, TrunkPoolsConfig
from sip.pools.errors import (
    PermitLost,
    PoolError,
    PoolExhausted,
    PoolStateUnavailable,
    PoolTimeout,
    UnknownPool,
)

_GRANTED, _FULL, _QUEUED, _REBUILD = 1, 0, 2, 3
_REBUILD_TRIES = 3  # a flush during each of these rebuilds is an outage, not a race

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Permit:
    """A held channel. `expires_at` is on the Redis server clock (Unix seconds)."""

    trunk: str
    pool: str
    holder: str
    expires_at: float


@dataclass(frozen=True)
class PoolStats:
    trunk: str
    pool: str
    size: int
    in_use: int
    waiting: int

    @property
    def free(self) -> int:
        return max(0, self.size - self.in_use)


@dataclass(frozen=True)
class PoolOccupancy:
    """Who holds a pool's permits and who waits for one (holder ids, oldest first), so a
    caller can count what is its own (a tenant's calls) instead of the whole trunk's."""

    trunk: str
    pool: str
    size: int
    holders: tuple[str, ...]
    waiting: tuple[str, ...]


def _holder_id(holder: str | Permit) -> str:
    hid = holder.holder if isinstance(holder, Permit) else holder
    if not hid:
        raise ValueError("holder id must be a non-empty string")
    return hid


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class Pool:
    """One pool of one trunk. Obtain it from `TrunkPools.get`."""

    def __init__(self, owner: TrunkPools, name: str, config: PoolConfig) -> None:
        self._owner = owner
        self.trunk = owner.config.trunk
        self.name = name
        self.size = config.size
        self.lease = config.lease
        base = f"{owner.config.key_prefix}:{{{self.trunk}}}:{name}:"
        self.keys: tuple[str, str, str, str, str, str] = (
            base + "leases",
            base + "since",
            base + "queue",
            base + "qexp",
            base + "seq",
            base + "epoch",
        )

    def __repr__(self) -> str:
        return f"<Pool {self.trunk}/{self.name} size={self.size}>"

    # -- acquiring -------------------------------------------------------------------------

    async def try_acquire(self, holder: str, *, lease: float | None = None) -> Permit:
        """Take a permit now or raise `PoolExhausted` (with `retry_after`); never waits."""
        return await self.acquire(holder, timeout=0, lease=lease)

    async def acquire(self, holder: str, *, timeout: float, lease: float | None = None) -> Permit:
        """Take a permit, waiting fairly (FIFO across processes) up to `timeout` seconds.

        Raises `PoolExhausted` at once when `timeout` <= 0, `PoolTimeout` at the deadline.
        If the caller is cancelled, its queued ticket or already-granted permit is given back.
        """
        holder = _holder_id(holder)
        if not math.isfinite(timeout):
            raise ValueError(f"timeout must be a finite number of seconds, not {timeout!r}")
        lease_ms = _ms(self.lease if lease is None else lease)
        owner = self._owner
        started = asyncio.get_running_loop().time()
        waiter: Waiter | None = None
        call: asyncio.Future[Any] | None = None
        owner._acquiring += 1
        try:
            if timeout <= 0:
                args: list[Any] = [self.size, holder, lease_ms, 0, ""]
            else:
                ticket = str(next(owner._tickets))
                member = f"{ticket}|{lease_ms}|{owner._waker.channel}|{holder}"
                waiter = Waiter(ticket, holder, member, self._recheck)
                owner._waker.register(waiter)  # before the ticket exists: no grant can slip by
                args = [self.size, holder, lease_ms, _ms(timeout), member]
            for _ in range(_REBUILD_TRIES):
                call = owner._batcher.call(_lua.acquire_script, self.keys, args)
                reply = await asyncio.shield(call)
                if isinstance(reply, int) or reply[0] != _REBUILD:
                    break
                call = None  # refused outright: nothing to give back
                await owner.ensure_state()
            else:
                raise PoolStateUnavailable(self.trunk, "Redis lost it again during each rebuild")
            if isinstance(reply, int):
                return self._permit(holder, reply)
            if waiter is None:
                raise self._exhausted(reply)
            return await self._wait(waiter, started + timeout, reply, started)
        except (PoolExhausted, PermitLost, PoolStateUnavailable):
            raise
        except BaseException:
            if call is not None:
                owner._spawn(self._abandon(holder, waiter.member if waiter else "", call))
            raise
        finally:
            if waiter is not None:
                owner._waker.discard(waiter.ticket)
            owner._acquiring -= 1
            if not owner._acquiring:
                owner._no_acquires.set()

    async def _wait(
        self, waiter: Waiter, deadline: float, reply: list[int], started: float
    ) -> Permit:
        loop = asyncio.get_running_loop()
        poke_at = self._poke_at(reply)
        while (now := loop.time()) < deadline:
            until = deadline if poke_at is None else min(deadline, poke_at)
            await asyncio.wait({waiter.future}, timeout=max(0.0, until - now))
            if waiter.future.done():
                if waiter.future.cancelled():
                    raise PoolError("trunk pools were closed while waiting")
                return self._permit(waiter.holder, waiter.future.result())
            if poke_at is not None and loop.time() >= poke_at and loop.time() < deadline:
                # The earliest lease has lapsed unless renewed: settle the pool (which hands
                # a reclaimed permit to the queue head) and look at our ticket again.
                status = await self._wait_status(waiter.holder, waiter.member, cancel=False)
                if status[0] == _GRANTED:
                    return self._permit(waiter.holder, status[1])
                if status[0] != _QUEUED:  # ticket lapsed on the server clock first
                    break
                poke_at = self._poke_at(status)
        status = await self._wait_status(waiter.holder, waiter.member, cancel=True)
        if status[0] == _GRANTED:  # handed over in the race with our deadline: take it
            return self._permit(waiter.holder, status[1])
        exhausted = self._exhausted(status)
        raise PoolTimeout(
            self.trunk,
            self.name,
            size=self.size,
            in_use=exhausted.in_use,
            waiting=exhausted.waiting,
            retry_after=exhausted.retry_after,
            waited=loop.time() - started,
        )

    async def _recheck(self, waiter: Waiter) -> int | None:
        status = await self._wait_status(waiter.holder, waiter.member, cancel=False)
        return int(status[1]) if status[0] == _GRANTED else None

    async def _wait_status(self, holder: str, member: str, *, cancel: bool) -> list[int]:
        args = [self.size, holder, member, "1" if cancel else "0"]
        return await self._owner._batcher.call(_lua.wait_status_script, self.keys, args)

    async def _abandon(self, holder: str, member: str, call: asyncio.Future[Any]) -> None:
        """Undo an acquire whose caller went away: drop its ticket or give back its permit.

        If Redis is unreachable the ticket still lapses at its deadline and a granted
        permit at the end of its lease.
        """
        await asyncio.wait({call})  # our cleanup must not overtake the acquire itself
        if not call.cancelled() and call.exception() is None:
            reply = call.result()
            if not isinstance(reply, int) and reply[0] == _FULL:
                return
        try:
            status = await self._wait_status(holder, member, cancel=True)
            if status[0] == _GRANTED:
                await self.release(holder)
        except Exception as exc:
            log.warning(
                "could not give back an abandoned acquire",
                pool=repr(self),
                holder=holder,
                error=str(exc),
            )

    def _poke_at(self, reply: list[int]) -> float | None:
        next_expiry, server_now = int(reply[1]), int(reply[2])
        if next_expiry <= 0:
            return None
        delay = max(0, next_expiry - server_now) / 1000 + 0.002
        return asyncio.get_running_loop().time() + delay

    def _permit(self, holder: str, expiry_ms: int) -> Permit:
        return Permit(self.trunk, self.name, holder, int(expiry_ms) / 1000)

    def _exhausted(self, reply: list[int]) -> PoolExhausted:
        cfg = self._owner.config
        next_expiry, server_now = int(reply[1]), int(reply[2])
        # The earliest lease is the soonest a permit must either be renewed or come back.
        hint = (next_expiry - server_now) / 1000 if next_expiry > 0 else cfg.retry_after_max
        retry_after = round(min(cfg.retry_after_max, max(cfg.retry_after_min, hint)), 3)
        return PoolExhausted(
            self.trunk,
            self.name,
            size=self.size,
            in_use=int(reply[4]),
            waiting=int(reply[3]),
            retry_after=retry_after,
        )

    @asynccontextmanager
    async def permit(
        self, holder: str | None = None, *, timeout: float = 0.0, lease: float | None = None
    ) -> AsyncIterator[Permit]:
        """Hold a permit for the duration of a block (short jobs; calls use acquire/release)."""
        permit = await self.acquire(
            holder or f"anon-{uuid.uuid4().hex}", timeout=timeout, lease=lease
        )
        try:
            yield permit
        finally:
            await asyncio.shield(self.release(permit))

    # -- holding ---------------------------------------------------------------------------

    async def release(self, holder: str | Permit) -> bool:
        """Give a permit back by holder id, from any process. Idempotent: False if none held."""
        args = [self.size, _holder_id(holder)]
        return bool(await self._owner._batcher.call(_lua.release_script, self.keys, args))

    async def renew(self, holder: str | Permit, *, lease: float | None = None) -> Permit:
        """Extend a live permit's lease to now + `lease`; `PermitLost` if it already lapsed."""
        hid = _holder_id(holder)
        args = [self.size, hid, _ms(self.lease if lease is None else lease)]
        expiry = await self._owner._batcher.call(_lua.renew_script, self.keys, args)
        if expiry == -1:  # Redis lost the holders: restore them (ours too), then renew
            await self._owner.ensure_state()
            expiry = await self._owner._batcher.call(_lua.renew_script, self.keys, args)
        if expiry is None or expiry <= 0:
            raise PermitLost(self.trunk, self.name, hid)
        return self._permit(hid, expiry)

    # -- observing and repairing -----------------------------------------------------------

    async def stats(self) -> PoolStats:
        reply = await self._owner._batcher.call(_lua.stats_script, self.keys, [self.size])
        if not reply[4]:  # an empty pool after a state loss is not free: rebuild, look again
            await self._owner.ensure_state()
            reply = await self._owner._batcher.call(_lua.stats_script, self.keys, [self.size])
        return PoolStats(self.trunk, self.name, self.size, int(reply[0]), int(reply[1]))

    async def holders(self) -> list[str]:
        """Holder ids with a live lease (lapsed leases are reaped first)."""
        reply = await self._owner._batcher.call(_lua.holders_script, self.keys, [self.size])
        return [_text(h) for h in reply]

    async def occupancy(self) -> PoolOccupancy:
        """Holders and waiting holders in one atomic snapshot."""
        reply = await self._owner._batcher.call(_lua.occupancy_script, self.keys, [self.size])
        if not reply[2]:  # as in stats: show the rebuilt holders, never a lost state as free
            await self._owner.ensure_state()
            reply = await self._owner._batcher.call(_lua.occupancy_script, self.keys, [self.size])
        leases, queue, _ = reply
        # A ticket member is `id|lease_ms|channel|holder`; the holder may itself contain `|`.
        waiting = tuple(_text(m).split("|", 3)[3] for m in queue)
        return PoolOccupancy(
            self.trunk, self.name, self.size, tuple(_text(h) for h in leases), waiting
        )

    async def reconcile(
        self, live_holder_ids: Iterable[str], *, min_age: float | None = None
    ) -> list[str]:
        """Release permits whose holders are not live (e.g. not in Asterisk's channel list).

        Permits younger than `min_age` seconds are kept: their call may not exist yet.
        Returns the holder ids released.
        """
        age = self._owner.config.reconcile_min_age if min_age is None else min_age
        args = [self.size, max(0, math.floor(age * 1000)), *live_holder_ids]
        reply = await self._owner._batcher.call(_lua.reconcile_script, self.keys, args)
        return [_text(h) for h in reply]


class TrunkPools:
    """The channel pools of one trunk, sharing one Redis client, batcher and wake channel.

    Create one per trunk per process and `aclose()` it on shutdown (or use `async with`);
    the Redis client stays the caller's.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        config: TrunkPoolsConfig | Mapping[str, Any] | None = None,
        *,
        lanes: int = 2,
        holders: HolderSource | None = None,
    ) -> None:
        if config is None:
            config = TrunkPoolsConfig()
        elif not isinstance(config, TrunkPoolsConfig):
            config = TrunkPoolsConfig.from_mapping(config)
        self.config = config
        self.redis = redis
        self._rebuilder = Rebuilder(
            redis,
            config.trunk,
            f"{config.key_prefix}:{{{config.trunk}}}:rebuilding",
            timeout=config.rebuild_timeout,
            source=holders,
        )
        self._batcher = ScriptBatcher(redis, lanes=lanes, on_connect=self._verify_epoch)
        self._waker = Waker(redis, f"{config.key_prefix}:wake:{uuid.uuid4().hex}")
        self._pools = {name: Pool(self, name, pc) for name, pc in config.pools.items()}
        self._background: set[asyncio.Task[None]] = set()
        self._tickets = itertools.count(1)  # unique within this instance's wake channel
        self._acquiring = 0
        self._no_acquires = asyncio.Event()

    def get(self, name: str) -> Pool:
        try:
            return self._pools[name]
        except KeyError:
            raise UnknownPool(self.config.trunk, name, sorted(self._pools)) from None

    __getitem__ = get

    def __iter__(self) -> Iterator[Pool]:
        return iter(self._pools.values())

    @property
    def names(self) -> list[str]:
        return list(self._pools)

    async def _verify_epoch(self, conn: Any) -> None:
        await verify_epoch(conn, [p.keys[5] for p in self._pools.values()], self.config.trunk)

    def rebuild_from(self, source: HolderSource) -> None:
        """Where holders come from after Redis lost them (the daemon: the calls table).
        Without a source a lost state is rebuilt empty — right only where nothing outlives
        Redis, e.g. a pool used for short jobs alone."""
        self._rebuilder.source = source

    @property
    def rebuilds(self) -> int:
        """How many times this instance rebuilt the pools' state."""
        return self._rebuilder.rebuilds

    async def ensure_state(self) -> None:
        """Return once the pools' Redis state is whole, rebuilding it first if Redis lost it
        (`PoolStateUnavailable` if no rebuild finishes within `rebuild_timeout`)."""
        await self._rebuilder.ensure(list(self._pools.values()))

    async def stats(self) -> dict[str, PoolStats]:
        results = await asyncio.gather(*(p.stats() for p in self._pools.values()))
        return {s.pool: s for s in results}

    async def occupancy(self) -> dict[str, PoolOccupancy]:
        results = await asyncio.gather(*(p.occupancy() for p in self._pools.values()))
        return {o.pool: o for o in results}

    async def reconcile(
        self, live_holder_ids: Iterable[str], *, min_age: float | None = None
    ) -> dict[str, list[str]]:
        """Reconcile every pool against one live-holder snapshot (after an AMI reconnect)."""
        live = list(live_holder_ids)
        results = await asyncio.gather(
            *(p.reconcile(live, min_age=min_age) for p in self._pools.values())
        )
        return dict(zip(self._pools, results, strict=True))

    def _spawn(self, coro: Any) -> None:
        """Run a cleanup that must outlive a cancelled caller; `aclose` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Stop waiting (waiters raise `PoolError`), give back what they were granted, stop.

        Permits already held stay held: calls outlive a process restart, and their
        leases or `reconcile` decide their fate.
        """
        await self._waker.aclose()
        while self._acquiring:
            self._no_acquires.clear()
            await self._no_acquires.wait()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self._batcher.aclose()

    async def __aenter__(self) -> TrunkPools:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
