"""Pools after Redis lost its state (DESIGN principle 10), on real Redis.

FLUSHDB stands in for a Redis that restarted without persistence: every lease, queue and
the epoch marker vanish together. The source of truth is a plain function here (the
daemon's is the calls table: tests/calls/test_pool_state_rebuild.py). Invariant under test:
the holders the source calls live are in the pool before any new acquire is admitted, and
admissions never take the pool past its size.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.redis import create_redis
from sip.pools import (
    PoolExhausted,
    PoolHolders,
    PoolStateUnavailable,
    TrunkPools,
    TrunkPoolsConfig,
)

MakePools = Callable[..., Awaitable[TrunkPools]]
LIVE = ("live-1", "live-2", "live-3")


@pytest.fixture
async def make_pools(redis_url: str) -> AsyncIterator[MakePools]:
    made: list[tuple[TrunkPools, Any]] = []

    async def make(
        truth: Callable[[], Awaitable[Mapping[str, PoolHolders]]] | None = None,
        pools: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> TrunkPools:
        client = create_redis(redis_url)
        cfg = TrunkPoolsConfig.from_mapping(
            {"trunk": "t1", "pools": pools or {"api": {"size": 8, "lease": 30}}, **kw}
        )
        tp = TrunkPools(client, cfg, holders=truth)
        made.append((tp, client))
        return tp

    yield make
    for tp, client in made:
        await tp.aclose()
        await client.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


def fixed(**pools: PoolHolders) -> Callable[[], Awaitable[Mapping[str, PoolHolders]]]:
    async def source() -> Mapping[str, PoolHolders]:
        return pools

    return source


async def test_a_flushed_redis_is_rebuilt_before_admitting_and_never_over_admits(
    make_pools: MakePools, raw: aioredis.Redis
) -> None:
    truth = fixed(api=PoolHolders(live=LIVE))
    a, b = await make_pools(truth), await make_pools(truth)  # two processes
    for holder in LIVE:
        await a.get("api").try_acquire(holder)
    before = a.rebuilds + b.rebuilds  # the fresh Redis was initialised by the first acquire
    await raw.flushdb()  # Redis restarts empty: 0 in use, as far as Redis knows

    async def admit(tp: TrunkPools, n: int) -> bool:
        try:
            await tp.get("api").try_acquire(f"new-{n}")
        except PoolExhausted:
            return False
        return True

    admitted = await asyncio.gather(*(admit((a, b)[n % 2], n) for n in range(20)))
    assert sum(admitted) == 8 - len(LIVE)
    holders = set(await a.get("api").holders())
    assert set(LIVE) <= holders and len(holders) == 8
    assert a.rebuilds + b.rebuilds == before + 1, "one process rebuilt, the other waited for it"


async def test_readers_see_the_rebuilt_holders_not_an_empty_pool(
    make_pools: MakePools, raw: aioredis.Redis
) -> None:
    tp = await make_pools(fixed(api=PoolHolders(live=LIVE)))
    await raw.flushdb()
    assert (await tp.get("api").stats()).in_use == 3
    await raw.flushdb()
    occupancy = await tp.occupancy()
    assert set(occupancy["api"].holders) == set(LIVE)


async def test_renew_after_a_flush_keeps_the_permit(
    make_pools: MakePools, raw: aioredis.Redis
) -> None:
    tp = await make_pools(fixed(api=PoolHolders(live=LIVE)))
    await tp.get("api").try_acquire("live-1")
    await raw.flushdb()
    permit = await tp.get("api").renew("live-1")  # no PermitLost: the rebuild restored it
    assert permit.holder == "live-1"


async def test_pending_holders_fill_only_free_room_and_live_ones_always_return(
    make_pools: MakePools,
) -> None:
    truth = fixed(
        api=PoolHolders(live=["l1"], pending=["p1", "p2", "p3"]),
        ivr=PoolHolders(live=["i1", "i2", "i3"]),  # more live calls than channels
    )
    tp = await make_pools(truth, pools={"api": 2, "ivr": 2})
    with pytest.raises(PoolExhausted):
        await tp.get("api").try_acquire("newcomer")
    assert set(await tp.get("api").holders()) == {"l1", "p1"}
    assert set(await tp.get("ivr").holders()) == {"i1", "i2", "i3"}
    with pytest.raises(PoolExhausted):
        await tp.get("ivr").try_acquire("newcomer")


async def test_a_flush_during_the_rebuild_voids_it_and_it_runs_again(
    make_pools: MakePools, raw: aioredis.Redis
) -> None:
    reads = 0

    async def flaky() -> Mapping[str, PoolHolders]:
        nonlocal reads
        reads += 1
        if reads == 1:
            await raw.flushdb()  # Redis restarts again between our read and our write
        return {"api": PoolHolders(live=LIVE)}

    tp = await make_pools(flaky, pools={"api": 4})
    await tp.get("api").try_acquire("new")
    assert set(await tp.get("api").holders()) == {*LIVE, "new"}
    assert tp.rebuilds == 1


async def test_a_call_that_ended_during_the_rebuild_gets_no_permit(
    make_pools: MakePools,
) -> None:
    views = iter([PoolHolders(live=LIVE), PoolHolders(live=LIVE[1:])])

    async def source() -> Mapping[str, PoolHolders]:
        return {"api": next(views)}  # live-1 hung up between the read and the restore

    tp = await make_pools(source)
    await tp.ensure_state()
    assert set(await tp.get("api").holders()) == set(LIVE[1:])


async def test_no_admission_while_the_truth_cannot_be_read(make_pools: MakePools) -> None:
    async def stuck() -> Mapping[str, PoolHolders]:
        await asyncio.sleep(30)  # e.g. PostgreSQL not answering
        return {}

    tp = await make_pools(stuck, rebuild_timeout=0.3)
    with pytest.raises(PoolStateUnavailable) as caught:
        await tp.get("api").try_acquire("new")
    assert isinstance(caught.value, RedisConnectionError), "callers treat it as Redis down"


async def _admit_through_the_outage(tp: TrunkPools, n: int) -> bool:
    for _ in range(50):  # a broken connection is an outage: the caller retries
        try:
            await tp.get("api").try_acquire(f"new-{n}")
        except PoolExhausted:
            return False
        except RedisConnectionError:
            await asyncio.sleep(0.02)
            continue
        return True
    raise AssertionError("Redis never came back for the pools")


def _crash(server: Any) -> None:
    server._proc.kill()
    server._proc.wait(5)
    server._proc = None


@pytest.fixture
async def private_redis() -> AsyncIterator[Any]:
    """A redis-server of this test's own (no automatic RDB saves, no AOF), to restart."""
    from gateway.devservices import PrivateRedis, short_runtime_dir

    root = short_runtime_dir("tl-rb-")
    server = PrivateRedis(data_dir=root / "redis")
    server.url = await asyncio.to_thread(server.start)  # type: ignore[attr-defined]
    yield server
    await asyncio.to_thread(server.stop)
    shutil.rmtree(root, ignore_errors=True)


async def test_a_real_redis_restart_without_persistence_is_rebuilt_before_admitting(
    private_redis: Any,
) -> None:
    """The same, with a real redis-server stopped and started again: connections break,
    scripts are gone (NOSCRIPT) and so is every key."""
    client = create_redis(private_redis.url)
    tp = TrunkPools(
        client,
        TrunkPoolsConfig.from_mapping({"trunk": "t1", "pools": {"api": 8}}),
        holders=fixed(api=PoolHolders(live=LIVE)),
    )
    try:
        for holder in LIVE:
            await tp.get("api").try_acquire(holder)
        await asyncio.to_thread(private_redis.stop)
        await asyncio.to_thread(private_redis.start)

        admitted = await asyncio.gather(*(_admit_through_the_outage(tp, n) for n in range(20)))
        assert sum(admitted) == 8 - len(LIVE)
        assert set(LIVE) <= set(await tp.get("api").holders())
    finally:
        await tp.aclose()
        await client.aclose()


async def test_a_restart_that_reloads_an_older_snapshot_is_rebuilt_too(
    private_redis: Any,
) -> None:
    """Redis comes back with a snapshot taken before the last two admissions: the marker is
    there (of the old run), the two holders are not. Trusting it would admit two too many."""
    later = ("later-1", "later-2")
    truth = list(LIVE)  # the calls table as it grows

    async def calls_table() -> Mapping[str, PoolHolders]:
        return {"api": PoolHolders(live=list(truth))}

    client = create_redis(private_redis.url)
    tp = TrunkPools(
        client,
        TrunkPoolsConfig.from_mapping({"trunk": "t1", "pools": {"api": 8}}),
        holders=calls_table,
    )
    try:
        for holder in LIVE:
            await tp.get("api").try_acquire(holder)
        await client.save()  # dump.rdb: the marker and three holders
        truth.extend(later)
        for holder in later:
            await tp.get("api").try_acquire(holder)
        await asyncio.to_thread(_crash, private_redis)  # SIGKILL: nothing saved since SAVE
        await asyncio.to_thread(private_redis.start)  # loads the older dump.rdb
        raw = create_redis(private_redis.url)
        assert set(map(bytes.decode, await raw.zrange("tl:pool:{t1}:api:leases", 0, -1))) == set(
            LIVE
        ), "the snapshot lacks the last admissions"
        await raw.aclose()

        admitted = await asyncio.gather(*(_admit_through_the_outage(tp, n) for n in range(20)))
        assert sum(admitted) == 8 - len(LIVE) - len(later)
        assert {*LIVE, *later} <= set(await tp.get("api").holders())
    finally:
        await tp.aclose()
        await client.aclose()


async def test_a_fair_waiter_after_a_flush_waits_behind_the_rebuilt_holders(
    make_pools: MakePools, raw: aioredis.Redis
) -> None:
    """The campaign path (acquire with a wait) is held to the same rule as try_acquire."""
    from sip.pools import PoolTimeout

    tp = await make_pools(fixed(api=PoolHolders(live=LIVE)), pools={"api": 3})
    await raw.flushdb()
    with pytest.raises(PoolTimeout):
        await tp.get("api").acquire("campaign-call", timeout=0.3)
    assert set(await tp.get("api").holders()) == set(LIVE)
    await tp.get("api").release("live-1")
    permit = await tp.get("api").acquire("campaign-call", timeout=1)
    assert permit.holder == "campaign-call"


async def test_a_pool_another_process_does_not_know_is_rebuilt_by_the_one_that_does(
    make_pools: MakePools, raw: aioredis.Redis
) -> None:
    """A rolling deploy adds a pool: the old process rebuilds only the pools it has, so each
    pool has its own marker and the new process still rebuilds the new pool."""
    truth = fixed(api=PoolHolders(live=LIVE[:1]), ivr=PoolHolders(live=LIVE[1:]))
    old = await make_pools(truth, pools={"api": 2})
    new = await make_pools(truth, pools={"api": 2, "ivr": 2})
    await old.get("api").try_acquire("new-api")  # the old process rebuilds "api" alone
    with pytest.raises(PoolExhausted):
        await new.get("ivr").try_acquire("new-ivr")  # "ivr" was rebuilt before admitting
    assert set(await new.get("ivr").holders()) == set(LIVE[1:])
    assert set(await new.get("api").holders()) == {LIVE[0], "new-api"}
