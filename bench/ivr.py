"""IVR over AsyncAGI: N concurrent inbound calls on the test AMI server (tests/amisim, built
from the real transcripts 05a/05b/05e/05g), each admitted through the `ivr` pool and driven by
the AsyncAGI transport, the runner (session in Redis, events in PostgreSQL) and the engine.

The calls arrive at `--arrival` per second and all wait in their menu's gather until the
last one is there (N live sessions at once); then every caller keys a wrong digit twice (the
menu asks again each time) and then the right one: four engine steps per call, taken while
the other calls are live. The AMI server runs on its own thread and event loop, so its work
is not queued on the daemon's loop.

Figures:
  * steps/s — engine steps committed per second, first arrival to last summary;
  * the daemon's own time per step, p50/p99 — `FlowRunner._step`: the engine, the session's
    compare-and-set in Redis and the PostgreSQL transaction of its events (waits for a pooled
    connection included), the AMI round trips excluded;
  * Redis round trips per step — requests this process sent to Redis (a pipeline or a script
    is one), divided by the steps: session CAS, pool permit, call lease, the call list, and
    the leases' and permits' renewals while the calls are live; Redis commands per step
    (`INFO commandstats`, commands run inside scripts included) beside it;
  * CPU per step — this process's CPU time over the run (the AMI server's thread included:
    an upper bound) divided by the steps; beside the wall-clock figures, which on a busy
    machine are mostly waiting (the 1-minute load average is printed with them);
  * RSS per live session — the process's resident memory with all N waiting, less before
    the calls, divided by N (the AMI server's own record of each call is in it: an upper
    bound).

    python -m bench.ivr [--sessions 500] [--arrival 250]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio.connection import AbstractConnection

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
from tests.amisim.asyncagi import AgiCall, AsyncAgiSim

FLOW = {
    "name": "bench",
    "start": "greet",
    "nodes": {
        "greet": {"say": "Thanks for calling.", "next": "menu"},
        "menu": {
            "gather": {"say": "Press 1.", "digits": 1, "timeout": 30, "retries": 3},
            "on": {"1": "bye"},
            "invalid": "menu",
        },
        "bye": {"say": "Goodbye.", "then": "hangup"},
    },
}
KEYS = ["9", "9", "1"]  # after the wait: two misses, then the branch
STEPS_PER_CALL = 1 + len(KEYS)


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


async def redis_commands(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


class RoundTrips:
    """Counts requests sent to Redis by this process (one per command, pipeline or script)."""

    def __init__(self) -> None:
        self.count = 0
        self._real = AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTrips:
        real, counter = self._real, self

        async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await real(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        AbstractConnection.send_packed_command = self._real  # type: ignore[method-assign]


class AmiThread:
    """The test AMI server on its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = AMISimServer()
        self.agi: AsyncAgiSim | None = None

    def __enter__(self) -> AmiThread:
        self.thread.start()
        self.run(self.server.start())
        self.agi = AsyncAgiSim(self.server)
        return self

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def call(self, n: int, hold: asyncio.Event) -> AgiCall:
        async def place() -> AgiCall:
            assert self.agi is not None
            return self.agi.inbound_call("7001", f"1555{n:07d}", keys=[hold, *KEYS])

        return self.run(place())

    def __exit__(self, *exc: object) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def run(sessions: int, arrival: float, database_url: str, redis_url: str) -> None:
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

    async def timed(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await real_step(*args, **kw)
        finally:
            step_ms.append((time.perf_counter() - t0) * 1000)

    runner._step = timed  # type: ignore[method-assign]

    async def route(env: dict[str, str]) -> Any:
        return row

    with AmiThread() as ami:
        client = AMIClient("127.0.0.1", ami.server.port, "gateway", "secret", action_timeout=30.0)
        await client.start()
        pools = TrunkPools(
            redis, TrunkPoolsConfig(trunk="bench", pools={"ivr": PoolConfig(sessions + 10)})
        )
        transport = AsyncAgiTransport(
            client,
            runner,
            route,
            pool=pools.get("ivr"),
            # the daemon's default lease (10 s): renewals every 3.3 s while the calls are live
            lease=RedisCallLease(redis, 10.0),
            command_timeout=60.0,
        )
        transport.attach()
        await pools.get("ivr").stats()  # the pool's first-use rebuild, before the clock starts
        before_rss, before_commands = rss_bytes(), await redis_commands(redis)
        hold = asyncio.Event()  # of the AMI server's loop: set there
        with RoundTrips() as trips:
            started, cpu_started = time.perf_counter(), time.process_time()
            calls = []
            for n in range(sessions):
                calls.append(ami.call(n, hold))
                await asyncio.sleep(max(0.0, started + (n + 1) / arrival - time.perf_counter()))

            async def waiting() -> None:
                while (  # noqa: ASYNC110 - the AMI server's record has no event to wait on
                    sum(1 for c in calls if any(x.startswith("GET DATA") for x in c.commands))
                    < sessions
                ):
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(waiting(), timeout=300)
            live = await pool.fetchval("SELECT count(*) FROM ivr_live")
            live_rss = rss_bytes()
            ami.loop.call_soon_threadsafe(hold.set)

            async def done() -> None:
                while await pool.fetchval("SELECT count(*) FROM ivr_sessions") < sessions:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(done(), timeout=300)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            round_trips = trips.count
        commands = await redis_commands(redis) - before_commands
        ended = await pool.fetch(
            "SELECT end_reason, count(*) AS n FROM ivr_sessions GROUP BY end_reason"
        )
        await transport.close()
        await client.close()
        await pools.aclose()
    await runner.webhooks.aclose()
    await redis.aclose()
    await pool.close()
    steps = len(step_ms)
    reasons = {r["end_reason"]: r["n"] for r in ended}
    assert reasons == {"hangup": sessions}, reasons  # every call ran the whole flow
    assert steps == sessions * STEPS_PER_CALL, steps
    report(
        f"IVR over AsyncAGI: {sessions} concurrent calls ({live} live at once)",
        [Result("engine step (runner._step, AMI excluded)", steps, elapsed, step_ms)],
        steps_per_s=round(steps / elapsed, 1),
        cpu_ms_per_step=round(cpu * 1000 / max(1, steps), 2),
        load_average=os.getloadavg()[0],
        redis_round_trips_per_step=round(round_trips / max(1, steps), 2),
        redis_commands_per_step=round(commands / max(1, steps), 2),
        rss_per_session_kib=round((live_rss - before_rss) / sessions / 1024, 1),
        takeovers=transport.takeovers,
        overflows=transport.overflows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--arrival", type=float, default=250.0, help="calls per second")
    args = parser.parse_args()
    with bench_services("trunkline_bench_ivr") as services:
        asyncio.run(run(args.sessions, args.arrival, services.database_url, services.redis_url))


if __name__ == "__main__":
    main()
