"""Channel pools: acquire+release pairs per second, and release → waiter wake-up latency.

The floor is what a C client gets from the same Redis in the same run: EVALSHA of a
trivial script through `redis-benchmark` (50 connections, no pipelining), plus our
release script run the same way to show the server-side cost of the pool logic.
Without TRUNKLINE_REDIS__URL a private redis-server is started and stopped here.

    .venv/bin/python -m bench.pools [--duration 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench.harness import Result, report, run_load
from gateway.devservices import PrivateRedis, short_runtime_dir
from gateway.redis import LuaScript, create_redis
from sip.pools import PoolConfig, TrunkPools, TrunkPoolsConfig, _lua

TRIVIAL = LuaScript("return 1", name="bench_trivial")
_RPS = re.compile(r"([\d.]+) requests per second")


def _benchmark_target(url: str) -> list[str]:
    """redis-benchmark connection flags for a redis:// or unix:// URL."""
    parts = urlsplit(url)
    flags: list[str] = []
    if parts.scheme == "unix":
        flags += ["-s", parts.path]
    else:
        flags += ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
        if parts.scheme == "rediss":
            flags.append("--tls")
        if parts.path.strip("/"):
            flags += ["--dbnum", parts.path.strip("/")]
    if parts.username:
        flags += ["--user", unquote(parts.username)]
    if parts.password:
        flags += ["-a", unquote(parts.password)]
    return flags


def redis_benchmark(url: str, command: list[str], *, clients: int = 50, n: int = 200_000) -> float:
    """Requests per second of `command` from the C client, or 0.0 if it cannot run."""
    binary = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
    if not Path(binary).exists():
        return 0.0
    cmd = [binary, *_benchmark_target(url), "-c", str(clients), "-n", str(n), "-q", *command]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    rates = _RPS.findall(out.stdout.replace("\r", "\n"))
    return float(rates[-1]) if rates else 0.0


async def pairs(pools: TrunkPools, concurrency: int, duration: float, label: str) -> Result:
    pool = pools.get("bench")
    ids = itertools.count()

    async def pair() -> None:
        holder = f"call-{next(ids)}"
        await pool.acquire(holder, timeout=30)
        await pool.release(holder)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = await run_load(label, pair, concurrency=concurrency, duration=duration)
    # CPU per pair in this process: steadier than the rate on a machine shared with others.
    busy = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    result.extra["cpu_us_per_pair"] = round(busy / result.rate * 1e6, 1) if result.rate else None
    stats = await pool.stats()
    assert stats.in_use == 0 and stats.waiting == 0, stats
    return result


async def wake_latency(url: str, rounds: int) -> Result:
    """A waiter in another TrunkPools (its own connection, as in another process) is queued
    on a full pool of one; time from just before `release` until its `acquire` returns."""
    cfg = TrunkPoolsConfig(trunk="wake", pools={"p": PoolConfig(1, lease=30)})
    a_client, b_client = create_redis(url), create_redis(url)
    latencies: list[float] = []
    async with TrunkPools(a_client, cfg) as a, TrunkPools(b_client, cfg) as b:
        pa, pb = a.get("p"), b.get("p")
        await pa.acquire("h-0", timeout=1)
        started = time.perf_counter()
        for i in range(1, rounds + 1):
            got = asyncio.get_running_loop().create_task(pb.acquire(f"h-{i}", timeout=10))
            while (await pa.stats()).waiting == 0:  # queued before we release (a round trip)
                pass
            t0 = time.perf_counter()
            await pa.release(f"h-{i - 1}")
            await got
            latencies.append((time.perf_counter() - t0) * 1000)
        await pa.release(f"h-{rounds}")
        elapsed = time.perf_counter() - started
    await a_client.aclose()
    await b_client.aclose()
    return Result("wake-up: release → waiter acquired", rounds, elapsed, latencies)


async def main(url: str, duration: float) -> None:
    client = create_redis(url)
    await TRIVIAL.ensure_loaded(client)
    await _lua.release_script.ensure_loaded(client)
    cfg = TrunkPoolsConfig(trunk="bench", pools={"bench": PoolConfig(100, lease=30)})
    release_keys = [
        f"tl:pool:{{bench}}:bench:{k}" for k in ("leases", "since", "queue", "qexp", "seq")
    ] + ["tl:pool:{bench}:bench:epoch"]

    floor = redis_benchmark(url, ["evalsha", TRIVIAL.sha, "0"])
    release_c = redis_benchmark(
        url, ["evalsha", _lua.release_script.sha, "6", *release_keys, "100", "nobody"]
    )

    results: list[Result] = []
    async with TrunkPools(client, cfg) as pools:
        for c in (1, 10, 100):
            results.append(await pairs(pools, c, duration, f"pool pairs, {c} holders (size 100)"))
    contended = TrunkPoolsConfig(trunk="bench8", pools={"bench": PoolConfig(8, lease=30)})
    async with TrunkPools(client, contended) as pools:
        results.append(await pairs(pools, 100, duration, "pool pairs, 100 holders on size 8"))
    results.append(await wake_latency(url, rounds=500))
    await client.aclose()

    best = max(r.rate for r in results[:3])
    figures: dict[str, Any] = {
        "cpu_us_per_pair": {r.name: r.extra.get("cpu_us_per_pair") for r in results[:4]},
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end",
        "floor_evalsha_per_s (redis-benchmark -c 50, trivial script)": round(floor, 1),
        "pool_release_script_per_s (redis-benchmark -c 50)": round(release_c, 1),
        "best_pairs_per_s": round(best, 1),
        "target_pairs_per_s": 10_000,
    }
    if floor:
        figures["pairs_per_s / floor_evalsha_per_s"] = round(best / floor, 3)
        figures["script calls per s / floor (2 calls a pair)"] = round(2 * best / floor, 3)
    else:
        figures["floor"] = "redis-benchmark not found: the floor could not be measured"
    report("sip.pools: acquire+release pairs and wake-up latency", results, **figures)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load run")
    args = parser.parse_args()
    with ExitStack() as stack:
        url = os.environ.get("TRUNKLINE_REDIS__URL")
        if not url:
            runtime = short_runtime_dir("tl-bench-")
            stack.callback(shutil.rmtree, runtime, True)
            server = PrivateRedis(data_dir=runtime / "redis")
            url = server.start()
            stack.callback(server.stop)
        print(f"redis: {url}")
        asyncio.run(main(url, args.duration))


if __name__ == "__main__":
    cli()
