"""Channel pools under load and across real processes: never over size, crashes heal.

The "over size" checks do not trust the pool's own answers: holders bump an
independent counter while they hold a permit, and a watcher reads the lease ZSET
straight from Redis throughout the run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.redis import create_redis
from sip.pools import PoolConfig, PoolTimeout, TrunkPools, TrunkPoolsConfig

LEASES = "tl:pool:{t1}:api:leases"


@pytest.fixture
async def procs(redis_url: str) -> AsyncIterator[Callable[[int, float], Awaitable[TrunkPools]]]:
    """TrunkPools instances, each with its own client and wake channel (a "process" each)."""
    made: list[tuple[TrunkPools, Any]] = []

    async def make(size: int, lease: float = 30.0) -> TrunkPools:
        client = create_redis(redis_url)
        tp = TrunkPools(
            client, TrunkPoolsConfig(trunk="t1", pools={"api": PoolConfig(size, lease)})
        )
        made.append((tp, client))
        return tp

    yield make
    for tp, client in made:
        await tp.aclose()
        await client.aclose()


class Watcher:
    """Polls the lease ZSET directly while the load runs; remembers the highest count."""

    def __init__(self, client: Any, key: str = LEASES) -> None:
        self.client, self.key, self.peak, self.samples = client, key, 0, 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, await self.client.zcard(self.key))
            self.samples += 1
            await asyncio.sleep(0)

    def __enter__(self) -> Watcher:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def test_500_concurrent_acquirers_never_exceed_8(procs: Any, redis_url: str) -> None:
    size, per_proc, n_procs = 8, 100, 5
    instances = [await procs(size) for _ in range(n_procs)]
    rnd = random.Random(7)
    holds = [rnd.uniform(0, 0.004) for _ in range(per_proc * n_procs)]
    holding = peak = 0
    served = 0

    async def one(i: int) -> None:
        nonlocal holding, peak, served
        pool = instances[i % n_procs].get("api")
        permit = await pool.acquire(f"call-{i}", timeout=30)
        holding += 1
        peak = max(peak, holding)
        assert holding <= size
        await asyncio.sleep(holds[i])
        holding -= 1
        assert await pool.release(permit)
        served += 1

    watcher_client = create_redis(redis_url)
    watcher = Watcher(watcher_client)
    with watcher:
        await asyncio.gather(*(one(i) for i in range(per_proc * n_procs)))
    await watcher.stop()
    await watcher_client.aclose()
    assert served == 500
    assert peak == size  # the pool was really saturated ...
    assert 0 < watcher.peak <= size and watcher.samples > 50  # ... and never over, per Redis
    stats = await instances[0].get("api").stats()
    assert (stats.in_use, stats.waiting) == (0, 0)


CHILD = """
import asyncio, random, sys
from gateway.redis import create_redis
from sip.pools import PoolConfig, TrunkPools, TrunkPoolsConfig

async def main(url, n, seed):
    r = create_redis(url)
    rnd = random.Random(seed)
    cfg = TrunkPoolsConfig(trunk="t1", pools={"api": PoolConfig(8, 30)})
    async with TrunkPools(r, cfg) as pools:
        pool = pools.get("api")
        async def one(i):
            await pool.acquire(f"p{seed}-{i}", timeout=30)
            if await r.incr("probe:holding") > 8:
                await r.incr("probe:violations")
            await asyncio.sleep(rnd.uniform(0, 0.003))
            await r.decr("probe:holding")
            await pool.release(f"p{seed}-{i}")
            await r.incr("probe:served")
        await asyncio.gather(*(one(i) for i in range(n)))
    await r.aclose()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""

HOLD_AND_HANG = """
import asyncio, sys
from gateway.redis import create_redis
from sip.pools import PoolConfig, TrunkPools, TrunkPoolsConfig

async def main(url, mode):
    r = create_redis(url)
    cfg = TrunkPoolsConfig(trunk="t1", pools={"api": PoolConfig(1, 0.3)})
    pools = TrunkPools(r, cfg)
    if mode == "hold":
        await pools.get("api").acquire("doomed-holder", timeout=1)
        print("held", flush=True)
    else:
        print("waiting", flush=True)
        await pools.get("api").acquire("doomed-waiter", timeout=0.6, lease=30)
    await asyncio.Event().wait()  # hang until SIGKILL: no release, no cleanup

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _child_env() -> dict[str, str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


async def test_processes_sharing_a_pool_never_exceed_its_size(procs: Any, redis_url: str) -> None:
    client = create_redis(redis_url)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, redis_url, "60", str(seed), env=_child_env()
        )
        for seed in range(3)
    ]
    watcher = Watcher(client)
    with watcher:
        codes = await asyncio.wait_for(asyncio.gather(*(c.wait() for c in children)), 60)
    await watcher.stop()
    assert codes == [0, 0, 0]
    assert int(await client.get("probe:served")) == 180
    assert await client.get("probe:violations") is None
    assert 0 < watcher.peak <= 8
    assert await client.zcard(LEASES) == 0
    await client.aclose()


async def _spawn_and_wait_for(url: str, mode: str, line: bytes) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_AND_HANG,
        url,
        mode,
        env=_child_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    # The child may log first (e.g. the pools' state being initialised on a fresh Redis).
    async with asyncio.timeout(30):
        while (got := await child.stdout.readline()) != line:
            assert got, f"the child exited before printing {line!r}"
    return child


async def _kill(child: asyncio.subprocess.Process) -> None:
    child.send_signal(signal.SIGKILL)
    await child.wait()


async def test_killed_holder_permit_returns_after_its_lease(procs: Any, redis_url: str) -> None:
    pools = await procs(1)
    child = await _spawn_and_wait_for(redis_url, "hold", b"held\n")
    killed_at = time.monotonic()
    await _kill(child)
    assert await pools.get("api").holders() == ["doomed-holder"]
    permit = await pools.get("api").acquire("survivor", timeout=5)  # no one ever releases
    assert time.monotonic() - killed_at < 1.0  # the lease is 0.3 s
    assert await pools.get("api").holders() == [permit.holder]


async def test_killed_waiter_ticket_lapses_and_does_not_jam_the_queue(
    procs: Any, redis_url: str
) -> None:
    pools = await procs(1)
    api = pools.get("api")
    await api.try_acquire("holder")
    child = await _spawn_and_wait_for(redis_url, "wait", b"waiting\n")

    async def queued() -> bool:
        return (await api.stats()).waiting == 1

    for _ in range(600):
        if await queued():
            break
        await asyncio.sleep(0.005)
    await _kill(child)
    behind = asyncio.create_task(api.acquire("behind", timeout=5))
    await asyncio.sleep(0.7)  # past the dead waiter's 0.6 s deadline
    await api.release("holder")
    assert (await behind).holder == "behind"  # not handed to the dead ticket
    assert "doomed-waiter" not in await api.holders()


async def test_churn_of_timeouts_cancels_and_releases_leaks_nothing(
    procs: Any, redis_url: str
) -> None:
    size = 3
    instances = [await procs(size) for _ in range(3)]
    rnd = random.Random(11)
    plan = [(rnd.uniform(0.005, 0.06), rnd.uniform(0, 0.01), rnd.random()) for _ in range(300)]
    holding = 0
    outcome = {"granted": 0, "timeout": 0, "cancelled": 0}

    async def one(i: int) -> None:
        nonlocal holding
        timeout, hold, luck = plan[i]
        pool = instances[i % 3].get("api")
        task = asyncio.create_task(pool.acquire(f"c{i}", timeout=timeout))
        if luck < 0.1:
            await asyncio.sleep(timeout / 2)
            task.cancel()
        try:
            permit = await task
        except PoolTimeout:
            outcome["timeout"] += 1
            return
        except asyncio.CancelledError:
            outcome["cancelled"] += 1
            return
        holding += 1
        assert holding <= size
        await asyncio.sleep(hold)
        holding -= 1
        await pool.release(permit)
        outcome["granted"] += 1

    watcher_client = create_redis(redis_url)
    watcher = Watcher(watcher_client)
    with watcher:
        await asyncio.gather(*(one(i) for i in range(300)))
        for _ in range(400):  # cancelled waiters give back in the background
            stats = await instances[0].get("api").stats()
            if (stats.in_use, stats.waiting) == (0, 0):
                break
            await asyncio.sleep(0.005)
    await watcher.stop()
    await watcher_client.aclose()
    assert outcome["granted"] and outcome["timeout"], outcome
    assert watcher.peak <= size
    assert (stats.in_use, stats.waiting) == (0, 0), (stats, outcome)
