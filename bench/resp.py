"""Our RESP client (`guardrails/resp.py`) against redis-py, pure and with hiredis, in one run.

The guardrail chain makes one EVALSHA of the rate-limit script per outbound action. This runs
that same call (the real script, a realistic bucket and cap) from `--concurrency` callers on
one event loop through four clients, and reports calls/s and the process's own CPU per call —
the figure that matters on the accept path, where Redis is not the bottleneck:

1. `ScriptPipe` (ours): one pipelined connection, replies matched by a FIFO of futures;
2. redis-py with its pure-Python RESP parser;
3. redis-py with hiredis' C parser;
4. redis-py with hiredis, calls batched `--batch` to a pipeline (what a per-batch caller,
   such as the group commit, could do instead of one call per action).

The floor is `redis-benchmark` running EVALSHA of the same script from its own process.

    python -m bench.resp [--duration 4] [--concurrency 64] [--batch 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import uvloop
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.utils import HIREDIS_AVAILABLE

from bench.harness import Result, report, run_load
from gateway.devservices import PrivateRedis, short_runtime_dir
from guardrails.ratelimit import SCRIPT, Bucket, Cap, _hit_call
from guardrails.resp import ScriptPipe

BUCKETS = (Bucket("tenant", "bench:rl:tenant", rate=1e9, burst=1000),)
CAPS = (Cap("recipient", "bench:rl:cap", max=1_000_000_000, window_s=1.0),)


def _call() -> tuple[list[str], tuple]:
    # A fresh member each call, as each action has its own id.
    _call.n += 1  # type: ignore[attr-defined]
    return _hit_call(BUCKETS, CAPS, f"m{_call.n}", False)  # type: ignore[attr-defined]


_call.n = 0  # type: ignore[attr-defined]


async def _measure(name: str, op, *, concurrency: int, duration: float, per_op: int = 1) -> Result:
    cpu0 = time.process_time()
    result = await run_load(name, op, concurrency=concurrency, duration=duration, warmup=0.5)
    cpu = time.process_time() - cpu0
    calls = result.ops * per_op
    # run_load's warm-up runs too: charge CPU over every call made, warm-up included, by rate.
    total_calls = calls * (duration + 0.5) / duration
    result.extra["cpu_us_per_call"] = round(cpu / total_calls * 1e6, 1) if total_calls else None
    result.ops = calls
    return result


def _client(url: str, parser: type) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, parser_class=parser, max_connections=256)


def _redis_benchmark(url: str, seconds: float) -> float | None:
    """EVALSHA of the same script from redis-benchmark (its own process): calls/s, or None."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    parts = urlsplit(url)
    keys, args = _hit_call(BUCKETS, CAPS, "bench", False)
    target = (
        ["-s", parts.path]
        if parts.scheme == "unix"
        else ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    )
    cmd = [binary, *target, "-c", "64", "-n", str(int(60_000 * seconds)), "-q", "--csv"]
    cmd += ["EVALSHA", SCRIPT.sha, str(len(keys)), *keys, *[str(a) for a in args]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.findall(r'"([0-9.]+)"', out.splitlines()[-1]) if out.strip() else []
    return float(found[0]) if found else None


async def main(url: str, args: argparse.Namespace) -> None:
    pure = _client(url, _AsyncRESP2Parser)
    fast = _client(url, _AsyncHiredisParser)
    await SCRIPT(pure, *_call())  # loads the script
    pipe = ScriptPipe(pure)
    results: list[Result] = []

    async def ours() -> None:
        await pipe.evalsha(SCRIPT, *_call())

    async def redis_py_pure() -> None:
        await SCRIPT(pure, *_call())

    async def redis_py_hiredis() -> None:
        await SCRIPT(fast, *_call())

    async def redis_py_pipelined() -> None:
        p = fast.pipeline(transaction=False)
        for _ in range(args.batch):
            keys, a = _call()
            p.evalsha(SCRIPT.sha, len(keys), *keys, *a)
        await p.execute()

    common = {"concurrency": args.concurrency, "duration": args.duration}
    results.append(await _measure("ScriptPipe (ours)", ours, **common))
    results.append(await _measure("redis-py, pure-Python parser", redis_py_pure, **common))
    results.append(await _measure("redis-py + hiredis", redis_py_hiredis, **common))
    results.append(
        await _measure(
            f"redis-py + hiredis, pipelines of {args.batch}",
            redis_py_pipelined,
            concurrency=max(1, args.concurrency // args.batch),
            duration=args.duration,
            per_op=args.batch,
        )
    )
    await pipe.aclose()
    await pure.aclose()
    await fast.aclose()
    floor = await asyncio.to_thread(_redis_benchmark, url, args.duration)
    cpu = {r.name: r.extra["cpu_us_per_call"] for r in results}
    ours_cpu = cpu["ScriptPipe (ours)"]
    report(
        f"EVALSHA of the rate-limit script, {args.concurrency} callers, one loop, "
        f"{os.cpu_count()} cores",
        results,
        redis_benchmark_evalsha_per_s=floor,
        cpu_us_per_call=cpu,
        hiredis_cpu_vs_ours=round(cpu["redis-py + hiredis"] / ours_cpu, 2),
        pure_cpu_vs_ours=round(cpu["redis-py, pure-Python parser"] / ours_cpu, 2),
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    if not HIREDIS_AVAILABLE:
        raise SystemExit("bench.resp compares against hiredis: pip install hiredis")
    with ExitStack() as stack:
        url = os.environ.get("TRUNKLINE_REDIS__URL")
        if not url:
            runtime = short_runtime_dir("tl-bench-")
            stack.callback(shutil.rmtree, runtime, True)
            server = PrivateRedis(data_dir=runtime / "redis")
            url = server.start()
            stack.callback(server.stop)
        uvloop.run(main(url, args))


if __name__ == "__main__":
    cli()
