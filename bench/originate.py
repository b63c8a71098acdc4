"""Originates per second end to end, and the latency from the API call to Originate on the wire.

End to end = POST /v1/calls → auth → guardrails → pool permit → durable call + job → a worker
claims it → guardrails again → pool → attempt row → AMI Originate → the test AMI server
(tests/amisim, built from the real Asterisk transcripts) answers it; its events are tracked
back into the call row, the call hangs up after `--hold` seconds and its permit is released.

The daemon (`--role all`) runs as its own process, like bench/http.py. The AMI server runs in
this process on its own thread and event loop, so the moment a POST leaves and the moment its
Originate arrives on the server's socket are read on one clock (`time.perf_counter`).
Floor, same run: AMIClient originating straight at the same server (no API, no database).

    python -m bench.originate [--concurrency 32] [--duration 5] [--hold 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg

from bench.harness import Result, report
from bench.services import bench_services, daemon_env, free_port, spawn, wait_http
from gateway import db
from gateway.tenants.service import create_key, create_tenant
from sip.ami import AMIClient
from tests.amisim import AMISimServer, Answer


class TimedAMI(AMISimServer):
    """The test AMI server, noting when each Originate arrived (by its ChannelId)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.arrived: dict[str, float] = {}

    async def _dispatch(self, session, action) -> None:  # type: ignore[no-untyped-def]
        if (action.name or "").lower() == "originate":
            self.arrived[action.get("ChannelId") or ""] = time.perf_counter()
        await super()._dispatch(session, action)


class AMIThread:
    """Run the AMI server on its own loop and thread."""

    def __init__(self, hold: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = TimedAMI(default_outcome=Answer(hangup_after=hold))

    def __enter__(self) -> TimedAMI:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc), to tell CPU-bound from waiting."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def config_file(ami_port: int, pool_size: int) -> Path:
    text = f"""
[database]
max_size = 40

[asterisk.main]
host = "127.0.0.1"
port = {ami_port}
username = "gateway"
secret = "secret"

[providers.voice]
primary = "asterisk:main"

[pools]
reconcile_min_age = 60.0

[pools.sizes]
api = {pool_size}

[calls]
dispatch_concurrency = 256
tracker_concurrency = 128

# The full chain runs; the limits are raised so they measure the path, not throttle it.
[guardrails.policy]
exempt_transactional_from_calling_hours = true

[guardrails.rate_limits.tenant]
rate = 1000000.0
burst = 1000000

[guardrails.rate_limits.api_key]
rate = 1000000.0
burst = 1000000

[guardrails.rate_limits.destination]
rate = 1000000.0
burst = 1000000
"""
    path = Path(tempfile.mkdtemp(prefix="tl-bench-")) / "originate.toml"
    path.write_text(text)
    return path


async def provision(database_url: str) -> str:
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        await create_tenant(pool, "bench")
        return (await create_key(pool, "bench")).token
    finally:
        await pool.close()


async def api_load(
    base: str, token: str, concurrency: int, duration: float, warmup: float = 1.0
) -> tuple[dict[str, float], list[float], Counter[int], float, float]:
    """POST /v1/calls from `concurrency` clients; returns call id → send time (measured
    window only), the 201 latencies, the status counts, the window's start and length."""
    sent: dict[str, float] = {}
    api_ms: list[float] = []
    statuses: Counter[int] = Counter()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"to": "+14155550100", "purpose": "transactional", "pool": "api", "ring_timeout": 30}
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, base_url=base) as session:

        async def worker() -> None:
            while loop.time() < stop:
                t0 = time.perf_counter()
                measuring = loop.time() >= start
                async with session.post("/v1/calls", json=body, headers=headers) as resp:
                    data = await resp.json()
                statuses[resp.status] += 1
                if resp.status == 201 and measuring:
                    sent[data["id"]] = t0
                    api_ms.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    window_start = time.perf_counter() - (loop.time() - start)
    return sent, api_ms, statuses, window_start, duration


async def ami_floor(port: int, concurrency: int, duration: float) -> Result:
    """Async Originates answered per second with no API, no database: the AMI path alone."""
    client = AMIClient("127.0.0.1", port, "gateway", "secret", action_timeout=10.0)
    await client.start()
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    n = 0
    try:
        start = loop.time() + 0.5
        stop = start + duration

        async def worker(w: int) -> None:
            nonlocal n
            i = 0
            while loop.time() < stop:
                i += 1
                t0 = time.perf_counter()
                await client.originate(
                    "PJSIP/+14155550100@carrier",
                    context="trunkline-outbound",
                    channel_id=f"floor-{w}-{i}",
                )
                if loop.time() >= start:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    n += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        await client.close()
    return Result("AMIClient Originate -> Response (floor)", n, duration, latencies)


async def drain(database_url: str, ids: list[str], timeout: float) -> tuple[Counter[str], float]:
    """Wait until the measured calls reached a final state (tracked to the end, permit back)."""
    conn = await asyncpg.connect(database_url)
    started = time.perf_counter()
    try:
        while True:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n FROM calls WHERE id = ANY($1::uuid[]) GROUP BY status",
                ids,
            )
            states = Counter({r["status"]: r["n"] for r in rows})
            live = sum(
                v for k, v in states.items() if k in ("queued", "dialing", "ringing", "answered")
            )
            if not live or time.perf_counter() - started > timeout:
                return states, time.perf_counter() - started
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--hold", type=float, default=0.5, help="seconds each answered call lasts")
    parser.add_argument("--pool-size", type=int, default=100000)
    args = parser.parse_args()

    with bench_services() as services, AMIThread(args.hold) as ami:
        token = asyncio.run(provision(services.database_url))
        floor = asyncio.run(ami_floor(ami.port, args.concurrency, args.duration))
        ami.arrived.clear()
        port = free_port()
        env = daemon_env(
            services, port, TRUNKLINE_CONFIG=str(config_file(ami.port, args.pool_size))
        )
        daemon = spawn(["-m", "gateway.cli", "run", "--role", "all"], env)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            time.sleep(1.0)  # the worker's AMI login and first reconcile
            cpu_before, wall_before = cpu_seconds(daemon.pid), time.perf_counter()
            sent, api_ms, statuses, window_start, duration = asyncio.run(
                api_load(f"http://127.0.0.1:{port}", token, args.concurrency, args.duration)
            )
            daemon_cpu = (cpu_seconds(daemon.pid) - cpu_before) / (
                time.perf_counter() - wall_before
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(f"tl-{cid}-1" in ami.arrived for cid in sent):
                    break
                time.sleep(0.05)
            states, drained_in = asyncio.run(drain(services.database_url, list(sent), 60))
        finally:
            daemon.terminate()
            daemon.wait(30)

    wire = {
        cid: ami.arrived[f"tl-{cid}-1"] - t0
        for cid, t0 in sent.items()
        if f"tl-{cid}-1" in ami.arrived
    }
    last = max((ami.arrived[f"tl-{cid}-1"] for cid in wire), default=window_start)
    span = max(last - window_start, duration)
    e2e = Result(
        "API -> Originate on the wire",
        len(wire),
        span,
        [s * 1000 for s in wire.values()],
        extra={"originated": len(wire), "accepted": len(sent)},
    )
    accept = Result("POST /v1/calls -> 201", len(api_ms), duration, api_ms)
    report(
        f"Originate: API -> guardrails -> pool -> AMI (concurrency {args.concurrency}, "
        f"{args.duration:.0f}s, calls held {args.hold}s)",
        [floor, accept, e2e],
        originates_per_s=round(e2e.rate, 1),
        p99_api_to_originate_ms=round(e2e.pct(99) or 0, 2),
        p50_api_to_originate_ms=round(e2e.pct(50) or 0, 2),
        mean_api_to_originate_ms=round(statistics.fmean(wire.values()) * 1000, 2) if wire else None,
        vs_ami_floor=round(e2e.rate / floor.rate, 3) if floor.rate else None,
        daemon_cpu_cores=round(daemon_cpu, 2),
        cpu_cores=os.cpu_count(),
        load_average_1m=round(os.getloadavg()[0], 2),
        http_statuses=dict(statuses),
        final_states=dict(states),
        tracked_to_the_end_in_s=round(drained_in, 2),
    )


if __name__ == "__main__":
    main()
