"""Channel pools on real Redis: leases, renew, release, fair waiting, reconcile, errors.

Each `TrunkPools` made by `make_pools` has its own Redis client and wake channel, so
two of them behave like two daemon processes sharing the trunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from gateway.redis import create_redis
from sip.pools import (
    PermitLost,
    PoolConfig,
    PoolError,
    PoolExhausted,
    PoolTimeout,
    TrunkPools,
    TrunkPoolsConfig,
    UnknownPool,
)
from tests.helpers import eventually

MakePools = Callable[..., Awaitable[TrunkPools]]


@pytest.fixture
async def make_pools(redis_url: str) -> AsyncIterator[MakePools]:
    made: list[tuple[TrunkPools, Any]] = []

    async def make(pools: Mapping[str, Any] | None = None, **kw: Any) -> TrunkPools:
        client = create_redis(redis_url)
        cfg = TrunkPoolsConfig.from_mapping(
            {"trunk": "t1", "pools": pools or {"api": {"size": 2, "lease": 30}}, **kw}
        )
        tp = TrunkPools(client, cfg)
        made.append((tp, client))
        return tp

    yield make
    for tp, client in made:
        await tp.aclose()
        await client.aclose()


async def waiting(tp: TrunkPools, pool: str, n: int) -> None:
    async def check() -> bool:
        return (await tp.get(pool).stats()).waiting == n

    await eventually(check)


# -- configuration and layout ----------------------------------------------------------------


def test_default_config_is_campaign_60_ivr_15_api_8() -> None:
    cfg = TrunkPoolsConfig()
    assert {n: p.size for n, p in cfg.pools.items()} == {"campaign": 60, "ivr": 15, "api": 8}
    cfg = TrunkPoolsConfig.from_mapping(
        {"trunk": "carrier-a", "pools": {"api": 4, "ivr": {"size": 2, "lease": 5}}}
    )
    assert cfg.pools["api"] == PoolConfig(4, lease=30.0)
    assert cfg.pools["ivr"] == PoolConfig(2, lease=5)
    with pytest.raises(ValueError, match="trunk name"):
        TrunkPoolsConfig(trunk="a{b}")
    with pytest.raises(ValueError, match="pool size"):
        PoolConfig(-1)


async def test_keys_are_namespaced_in_one_hash_slot_per_trunk(make_pools: MakePools) -> None:
    tp = await make_pools({"api": 2, "ivr": 1})
    await tp.get("api").try_acquire("c1")
    await tp.get("ivr").try_acquire("c2")
    keys = sorted(k.decode() for k in await tp.redis.keys("*"))
    assert keys and all(k.startswith("tl:pool:{t1}:") for k in keys), keys
    assert "tl:pool:{t1}:api:leases" in keys and "tl:pool:{t1}:ivr:leases" in keys


async def test_unknown_pool_names_the_known_ones(make_pools: MakePools) -> None:
    tp = await make_pools()
    with pytest.raises(UnknownPool, match="pools: api"):
        tp.get("nope")


# -- try_acquire, release, leases ----------------------------------------------------------


async def test_try_acquire_on_full_pool_raises_exhausted_with_retry_after(
    make_pools: MakePools,
) -> None:
    tp = await make_pools({"api": {"size": 2, "lease": 5}}, retry_after_min=1, retry_after_max=10)
    api = tp.get("api")
    p1 = await api.try_acquire("call-1")
    await api.try_acquire("call-2")
    assert p1.holder == "call-1" and p1.expires_at > time.time() + 4
    with pytest.raises(PoolExhausted) as info:
        await api.try_acquire("call-3")
    err = info.value
    assert (err.size, err.in_use, err.waiting) == (2, 2, 0)
    assert 4 <= err.retry_after <= 5  # until the earliest lease must be renewed or returns
    assert "t1/api is full" in str(err)
    assert not isinstance(err, PoolTimeout)


async def test_release_is_idempotent_and_works_from_another_process(
    make_pools: MakePools,
) -> None:
    a, b = await make_pools(), await make_pools()
    permit = await a.get("api").try_acquire("call-1")
    assert await b.get("api").release("call-1") is True  # Hangup seen by another worker
    assert await a.get("api").release(permit) is False
    assert await b.get("api").release("call-1") is False
    assert (await a.get("api").stats()).in_use == 0


async def test_acquire_with_a_held_holder_id_does_not_take_a_second_permit(
    make_pools: MakePools,
) -> None:
    api = (await make_pools()).get("api")
    first = await api.try_acquire("call-1", lease=1)
    again = await api.acquire("call-1", timeout=1, lease=10)  # e.g. a retried request
    assert again.expires_at > first.expires_at
    assert (await api.stats()).in_use == 1
    assert await api.holders() == ["call-1"]


async def test_lapsed_lease_is_reaped_by_the_next_acquire(make_pools: MakePools) -> None:
    api = (await make_pools({"api": {"size": 1, "lease": 0.3}})).get("api")
    await api.try_acquire("crashed")
    with pytest.raises(PoolExhausted):
        await api.try_acquire("other")
    await asyncio.sleep(0.35)
    await api.try_acquire("other")
    assert await api.holders() == ["other"]
    assert await api.release("crashed") is False


async def test_waiter_gets_a_lapsed_permit_without_any_release(make_pools: MakePools) -> None:
    """Nobody calls the pool: the waiter's own lease-expiry timer reclaims the permit."""
    api = (await make_pools({"api": {"size": 1, "lease": 0.3}})).get("api")
    await api.try_acquire("crashed")
    t0 = time.monotonic()
    permit = await api.acquire("waiter", timeout=3, lease=30)
    assert 0.2 < time.monotonic() - t0 < 1.0
    assert permit.holder == "waiter"


async def test_renew_keeps_a_permit_past_its_lease_then_it_lapses(make_pools: MakePools) -> None:
    api = (await make_pools({"api": {"size": 1, "lease": 0.3}})).get("api")
    permit = await api.try_acquire("call-1")
    for _ in range(3):
        await asyncio.sleep(0.15)
        renewed = await api.renew(permit)
        assert renewed.expires_at > permit.expires_at
        permit = renewed
    # 0.45 s after acquiring, well past the first 0.3 s lease: still ours.
    assert await api.holders() == ["call-1"]
    with pytest.raises(PoolExhausted):
        await api.try_acquire("call-2")
    await asyncio.sleep(0.35)
    with pytest.raises(PermitLost, match="call-1"):
        await api.renew("call-1")
    await api.try_acquire("call-2")


async def test_renew_after_release_fails_clearly(make_pools: MakePools) -> None:
    api = (await make_pools()).get("api")
    await api.try_acquire("call-1")
    await api.release("call-1")
    with pytest.raises(PermitLost):
        await api.renew("call-1", lease=10)


async def test_permit_context_manager_releases_on_exit_and_on_error(
    make_pools: MakePools,
) -> None:
    api = (await make_pools()).get("api")
    async with api.permit("job-1", timeout=1) as permit:
        assert permit.holder == "job-1"
        assert (await api.stats()).in_use == 1
    assert (await api.stats()).in_use == 0
    with pytest.raises(RuntimeError):
        async with api.permit(timeout=1):
            raise RuntimeError("boom")
    assert (await api.stats()).in_use == 0


async def test_scripts_are_reloaded_after_script_flush(make_pools: MakePools) -> None:
    tp = await make_pools()
    api = tp.get("api")
    await api.try_acquire("a")
    await tp.redis.script_flush()  # as after a Redis restart
    results = await asyncio.gather(api.release("a"), api.try_acquire("b"), api.stats())
    assert results[0] is True and results[1].holder == "b" and results[2].in_use == 1


# -- fair waiting ------------------------------------------------------------------------------


async def test_waiters_are_served_in_fifo_order_across_processes(make_pools: MakePools) -> None:
    procs = [await make_pools({"api": 1}), await make_pools({"api": 1})]
    await procs[0].get("api").try_acquire("holder")
    served: list[int] = []

    async def wait_turn(i: int) -> None:
        pool = procs[i % 2].get("api")
        await pool.acquire(f"w{i}", timeout=10)
        served.append(i)
        await pool.release(f"w{i}")

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(wait_turn(i)))
        await waiting(procs[0], "api", i + 1)  # queued strictly one after another
    await procs[1].get("api").release("holder")
    await asyncio.gather(*tasks)
    assert served == list(range(8))


async def test_newcomer_cannot_overtake_a_waiter(make_pools: MakePools) -> None:
    a, b = await make_pools({"api": 1}), await make_pools({"api": 1})
    await a.get("api").try_acquire("holder")
    queued = asyncio.create_task(b.get("api").acquire("waiter", timeout=5))
    await waiting(a, "api", 1)
    await a.get("api").release("holder")
    with pytest.raises(PoolExhausted):  # the permit went to the queue head inside release
        await a.get("api").try_acquire("newcomer")
    assert (await queued).holder == "waiter"


async def test_waiter_times_out_cleanly_and_the_next_waiter_is_still_woken(
    make_pools: MakePools,
) -> None:
    a, b = await make_pools({"api": 1}), await make_pools({"api": 1})
    await a.get("api").try_acquire("holder")
    impatient = asyncio.create_task(b.get("api").acquire("impatient", timeout=0.2))
    await waiting(a, "api", 1)
    patient = asyncio.create_task(a.get("api").acquire("patient", timeout=10))
    await waiting(a, "api", 2)
    with pytest.raises(PoolTimeout) as info:
        await impatient
    assert info.value.waited >= 0.2 and info.value.in_use == 1
    assert (await a.get("api").stats()).waiting == 1  # its ticket is gone, not left to lapse
    t0 = time.monotonic()
    await b.get("api").release("holder")
    assert (await patient).holder == "patient"
    assert time.monotonic() - t0 < 0.5
    assert await a.get("api").holders() == ["patient"]


async def test_cancelled_waiter_leaves_neither_ticket_nor_permit(make_pools: MakePools) -> None:
    tp = await make_pools({"api": 1})
    api = tp.get("api")
    await api.try_acquire("holder")
    task = asyncio.create_task(api.acquire("gone", timeout=10))
    await waiting(tp, "api", 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await waiting(tp, "api", 0)
    await api.release("holder")
    assert (await api.stats()).in_use == 0
    assert await api.holders() == []


async def test_cancel_racing_a_grant_gives_the_permit_back(make_pools: MakePools) -> None:
    """Cancel the waiter in the same turn as the release that hands it the permit."""
    a, b = await make_pools({"api": 1}), await make_pools({"api": 1})
    for i in range(20):
        await a.get("api").try_acquire(f"h{i}")
        task = asyncio.create_task(b.get("api").acquire(f"w{i}", timeout=10))
        await waiting(a, "api", 1)
        release = asyncio.create_task(a.get("api").release(f"h{i}"))
        await asyncio.sleep(0.0005 * (i % 4))
        task.cancel()
        await release
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled():  # it won the race and holds the permit: give it back
            await b.get("api").release(outcome)

        async def settled() -> bool:
            stats = await a.get("api").stats()
            return (stats.in_use, stats.waiting) == (0, 0)

        await eventually(settled)  # the cancelled side gives back in the background


async def test_deadline_racing_a_release_never_strands_a_permit(make_pools: MakePools) -> None:
    a, b = await make_pools({"api": 1}), await make_pools({"api": 1})
    outcomes = set()
    for i in range(24):
        await a.get("api").try_acquire(f"h{i}")
        task = asyncio.create_task(b.get("api").acquire(f"w{i}", timeout=0.03))
        await asyncio.sleep(0.022 + 0.001 * (i % 12))  # around the waiter's deadline
        await a.get("api").release(f"h{i}")
        try:
            permit = await task
        except PoolTimeout:
            outcomes.add("timeout")
        else:
            outcomes.add("granted")
            await b.get("api").release(permit)
        stats = await a.get("api").stats()
        assert (stats.in_use, stats.waiting) == (0, 0), (i, stats)
    assert outcomes  # either side of the race is fine; a lost permit is not


async def test_waiter_is_woken_after_its_wake_channel_drops(make_pools: MakePools) -> None:
    """Grants published while the subscriber is disconnected are found by the re-check."""
    a, b = await make_pools({"api": 1}), await make_pools({"api": 1})
    await a.get("api").try_acquire("holder")
    task = asyncio.create_task(b.get("api").acquire("waiter", timeout=10))
    await waiting(a, "api", 1)
    killed = await a.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1
    t0 = time.monotonic()
    await a.get("api").release("holder")  # the PUBLISH may find nobody listening
    assert (await task).holder == "waiter"
    assert time.monotonic() - t0 < 3


async def test_closing_the_pools_ends_waits_and_drops_tickets(make_pools: MakePools) -> None:
    a, b = await make_pools({"api": 1}), await make_pools({"api": 1})
    await a.get("api").try_acquire("holder")
    task = asyncio.create_task(b.get("api").acquire("waiter", timeout=10))
    await waiting(a, "api", 1)
    await b.aclose()
    with pytest.raises(PoolError, match="closed"):
        await task
    assert (await a.get("api").stats()).waiting == 0


# -- observing and reconciling ---------------------------------------------------------------


async def test_stats_and_holders(make_pools: MakePools) -> None:
    tp = await make_pools({"api": 2, "ivr": 3})
    await tp.get("api").try_acquire("c1")
    await tp.get("api").try_acquire("c2")
    await tp.get("ivr").try_acquire("c3")
    waiter = asyncio.create_task(tp.get("api").acquire("c4", timeout=5))
    await waiting(tp, "api", 1)
    stats = await tp.stats()
    assert (stats["api"].size, stats["api"].in_use, stats["api"].waiting) == (2, 2, 1)
    assert (stats["ivr"].in_use, stats["ivr"].free) == (1, 2)
    assert sorted(await tp.get("api").holders()) == ["c1", "c2"]
    await tp.get("api").release("c1")
    await waiter
    assert sorted(await tp.get("api").holders()) == ["c2", "c4"]


async def test_occupancy_names_holders_and_waiters_so_callers_count_their_own(
    make_pools: MakePools,
) -> None:
    """The tenant view of GET /v1/pools counts its own calls among these ids."""
    tp = await make_pools({"api": 1, "ivr": 1})
    other = await make_pools({"api": 1, "ivr": 1})  # another process on the same trunk
    await tp.get("api").try_acquire("call-a")
    first = asyncio.create_task(other.get("api").acquire("call|with|bars", timeout=5))
    await waiting(tp, "api", 1)
    second = asyncio.create_task(tp.get("api").acquire("call-c", timeout=5))
    await waiting(tp, "api", 2)
    seen = await other.occupancy()
    assert (seen["api"].size, seen["api"].holders) == (1, ("call-a",))
    assert seen["api"].waiting == ("call|with|bars", "call-c"), "FIFO order, holder ids intact"
    assert (seen["ivr"].holders, seen["ivr"].waiting) == ((), ())
    await tp.get("api").release("call-a")
    await first
    after = await tp.get("api").occupancy()
    assert (after.holders, after.waiting) == (("call|with|bars",), ("call-c",))
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second


async def test_reconcile_releases_holders_that_are_no_longer_live(make_pools: MakePools) -> None:
    tp = await make_pools({"api": 3, "ivr": 2})
    for call in ("live-1", "dead-1", "dead-2"):
        await tp.get("api").try_acquire(call)
    await tp.get("ivr").try_acquire("dead-3")
    released = await tp.reconcile(["live-1", "unrelated"], min_age=0)
    assert sorted(released["api"]) == ["dead-1", "dead-2"] and released["ivr"] == ["dead-3"]
    assert await tp.get("api").holders() == ["live-1"]
    assert await tp.get("ivr").holders() == []


async def test_reconcile_spares_permits_younger_than_min_age(make_pools: MakePools) -> None:
    """A call holds its permit before Originate, so Asterisk cannot list it yet."""
    api = (await make_pools({"api": 3})).get("api")
    await api.try_acquire("old")
    await asyncio.sleep(0.15)
    await api.try_acquire("originating")
    assert await api.reconcile([], min_age=0.1) == ["old"]
    assert await api.holders() == ["originating"]


async def test_reconcile_hands_freed_permits_to_waiters(make_pools: MakePools) -> None:
    a, b = await make_pools({"api": 1}), await make_pools({"api": 1})
    await a.get("api").try_acquire("ghost")
    task = asyncio.create_task(b.get("api").acquire("next", timeout=5))
    await waiting(a, "api", 1)
    assert await a.get("api").reconcile([], min_age=0) == ["ghost"]
    assert (await task).holder == "next"
