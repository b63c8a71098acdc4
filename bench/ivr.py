"""IVR over AsyncAGI: N concurrent inbound calls on the test AMI server (tests/amisim, built
from the real transcripts 05a/05b/05e/05g), each admitted through the `ivr` pool and driven by
the AsyncAGI transport, the runner (session in Redis, events in PostgreSQL) and the engine.

Figures:
  * steps/s — engine steps committed per second over the whole run (each call: start, digits);
  * the daemon's own time per step, p50/p99 — `FlowRunner._step` (engine + Redis CAS + the
    PostgreSQL transaction of its events), the AMI round trips excluded;
  * Redis commands per step — `INFO commandstats` before and after (session CAS, pool permit,
    call lease and its renewals), divided by the steps;
  * RSS per live session — the process's resident memory while all N wait in their gather,
    less before the calls, divided by N (this process also runs the AMI server: an upper bound).

    python -m bench.ivr [--sessions 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

from bench.harness import Result, report
from bench.services import bench_services
from gateway import db
from gateway.core.ids import new_id
from gateway.redis import create_redis
from gateway.tenants.service import create_tenant
from guardrails.chain import GuardrailChain
from ivr import repo
from ivr.asyncagi import AsyncAgiTransport
from ivr.flow import Flow
from ivr.leases import RedisCallLease
from ivr.runner import FlowRunner
from ivr.sessions import SessionStore
from ivr.webhook import WebhookCaller
from sip.ami import AMIClient
from sip.pools import PoolConfig, TrunkPools, TrunkPoolsConfig
from tests.amisim import AMISimServer
from tests.amisim.asyncagi import AsyncAgiSim

FLOW = {
    "name": "bench",
    "start": "greet",
    "nodes": {
        "greet": {"say": "Thanks for calling.", "next": "menu"},
        "menu": {
            "gather": {"say": "Press 1.", "digits": 1, "timeout": 30, "retries": 0},
            "on": {"1": "bye"},
        },
        "bye": {"say": "Goodbye.", "then": "hangup"},
    },
}


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


async def redis_calls(redis) -> int:  # type: ignore[no-untyped-def]
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def run(sessions: int, database_url: str, redis_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=2, max_size=20)
    redis = create_redis(redis_url, max_connections=64)
    tenant = await create_tenant(pool, f"bench-{uuid.uuid4().hex[:6]}")
    async with pool.acquire() as conn, conn.transaction():
        row = await repo.insert_flow(
            conn,
            new_id(),
            tenant,
            "bench",
            Flow.model_validate(FLOW).model_dump(mode="json", by_alias=True, exclude_none=True),
            "whsec_b",
        )
    runner = FlowRunner(
        pool, SessionStore(redis), GuardrailChain([]), WebhookCaller(allow_private=True)
    )
    step_ms: list[float] = []
    real_step = runner._step

    async def timed(*args, **kw):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return await real_step(*args, **kw)
        finally:
            step_ms.append((time.perf_counter() - t0) * 1000)

    runner._step = timed  # type: ignore[method-assign]

    async def route(env: dict[str, str]):  # type: ignore[no-untyped-def]
        return row

    async with AMISimServer() as ami:
        agi = AsyncAgiSim(ami)
        client = AMIClient("127.0.0.1", ami.port, "gateway", "secret", action_timeout=30.0)
        await client.start()
        pools = TrunkPools(
            redis, TrunkPoolsConfig(trunk="bench", pools={"ivr": PoolConfig(sessions + 10)})
        )
        transport = AsyncAgiTransport(
            client,
            runner,
            route,
            pool=pools.get("ivr"),
            lease=RedisCallLease(redis, 3.0),
            command_timeout=60.0,
        )
        transport.attach()
        before_rss, before_redis = rss_bytes(), await redis_calls(redis)
        hold = asyncio.Event()
        started = time.perf_counter()
        calls = [
            agi.inbound_call("7001", f"1555{n:07d}", keys=[hold, "1"]) for n in range(sessions)
        ]

        async def waiting() -> None:
            while (  # noqa: ASYNC110 - polling the AMI server's record, which has no event
                sum(1 for c in calls if any(x.startswith("GET DATA") for x in c.commands))
                < sessions
            ):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(waiting(), timeout=300)
        live_rss = rss_bytes()
        hold.set()

        async def done() -> None:
            while await pool.fetchval("SELECT count(*) FROM ivr_sessions") < sessions:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(done(), timeout=300)
        elapsed = time.perf_counter() - started
        commands = await redis_calls(redis) - before_redis
        await transport.close()
        await client.close()
        await pools.aclose()
    await runner.webhooks.aclose()
    await redis.aclose()
    await pool.close()
    steps = len(step_ms)
    report(
        f"IVR over AsyncAGI: {sessions} concurrent calls",
        [Result("engine step (runner._step, AMI excluded)", steps, elapsed, step_ms)],
        steps_per_s=round(steps / elapsed, 1),
        redis_commands_per_step=round(commands / max(1, steps), 1),
        rss_per_session_kib=round((live_rss - before_rss) / sessions / 1024, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=500)
    args = parser.parse_args()
    with bench_services("trunkline_bench_ivr") as services:
        asyncio.run(run(args.sessions, services.database_url, services.redis_url))


if __name__ == "__main__":
    main()
