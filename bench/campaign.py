"""A campaign on the sandbox: pool utilisation, dials/s beside their ceiling, first-dial latency.

The daemon (`--role all`) runs as its own process with the sandbox voice provider and a
`campaign` pool of `--channels`; the campaign dials `--prospects` numbers of the sandbox list
profile (+1 NPA 555 2xyz: answers, no answers, busy, machines…) with max_concurrent = the
pool. While prospects remain to be dialled, this process samples the pool's holders in Redis
every 50 ms: utilisation is their time-weighted mean over the pool size (aim ≥ 90 %).

Beside each other: dials/s achieved, and the ceiling channels ÷ mean call time (a channel is
held from the dispatch's permit to the call's end: the mean of ended − created over the calls);
the first dial's latency after `start`; the daemon's CPU per dial (the whole process: API,
pipeline, sandbox and dialer — an upper bound of the dialer's own).

    python -m bench.campaign [--prospects 10000] [--channels 60] [--hold 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from bench.harness import Result, report
from bench.originate import cpu_seconds
from bench.services import bench_services, daemon_env, free_port, spawn, wait_http
from gateway import db
from gateway.campaigns import service
from gateway.campaigns.schemas import CampaignIn
from gateway.tenants.service import create_tenant

NPAS = ["212", "312", "415", "617", "713", "305", "206", "303", "404", "503"]


def config_file(channels: int, hold: float) -> Path:
    text = f"""
[providers.sandbox]
receipt_delay = 0.02

[providers.voice]
primary = "sandbox"

[pools]
sizes = {{ api = 8, campaign = {channels}, ivr = 1 }}

[calls]
sandbox_call_duration = {hold}
sandbox_ring_seconds = {hold}

[guardrails.policy]
exempt_transactional_from_calling_hours = true

[guardrails.rate_limits]
tenant = {{ rate = 100000.0, burst = 100000 }}
api_key = {{ rate = 100000.0, burst = 100000 }}
destination = {{ rate = 100000.0, burst = 100000 }}
sender = {{ rate = 100000.0, burst = 100000 }}
"""
    path = Path(tempfile.mkdtemp(prefix="tl-bench-campaign-")) / "trunkline.toml"
    path.write_text(text)
    return path


def numbers(n: int) -> list[str]:
    per_npa = -(-n // len(NPAS))
    if per_npa > 1000:
        raise SystemExit(f"at most {1000 * len(NPAS)} prospects (1,000 list numbers per NPA)")
    return [f"+1{NPAS[i % 10]}5552{(i // 10 * 37) % 1000:03d}" for i in range(n)]


async def provision(url: str, prospects: int, channels: int) -> uuid.UUID:
    pool = await db.create_pool(url, min_size=1, max_size=2)
    try:
        tenant_id = await create_tenant(pool, f"bench-{uuid.uuid4().hex[:8]}")
        body = CampaignIn.model_validate(
            {
                "name": "bench",
                "purpose": "transactional",  # the real clock: exempt from calling hours
                "pacing": {"max_concurrent": channels, "cps": 100},
                "retry": {"max_attempts": 1},
                "window": {"days": "mon-sun", "start": "00:00", "end": "24:00"},
            }
        )
        _, made = await service.create(pool, tenant_id, body)
        campaign_id = uuid.UUID(made["id"])
        csv = Path(tempfile.mkdtemp(prefix="tl-bench-campaign-")) / "prospects.csv"
        csv.write_text("number\n" + "\n".join(numbers(prospects)) + "\n")
        t0 = time.perf_counter()
        added = await service.import_file(pool, campaign_id, str(csv))
        print(f"imported {added.added} prospects in {time.perf_counter() - t0:.2f} s")
        return campaign_id
    finally:
        await pool.close()


async def run(url: str, redis_url: str, campaign_id: uuid.UUID, channels: int, pid: int) -> dict:
    conn = await asyncpg.connect(url)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        tenant_id = await conn.fetchval(
            "SELECT tenant_id FROM campaigns WHERE id = $1", campaign_id
        )
        pool = await db.create_pool(url, min_size=1, max_size=2)
        try:
            await service.move(pool, tenant_id, campaign_id, "start")
        finally:
            await pool.close()
        started, cpu0 = time.perf_counter(), cpu_seconds(pid)
        holders_key = None  # the pool's lease set (sip/pools: <prefix>:{trunk}:campaign:leases)
        busy_area, last, remaining = 0.0, started, True
        while remaining:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            if holders_key is None:
                keys = [k async for k in redis.scan_iter(match="*:campaign:leases")]
                holders_key = keys[0] if keys else None
            held = await redis.zcard(holders_key) if holders_key else 0
            busy_area += held * (now - last)
            last = now
            remaining = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM campaign_prospects WHERE campaign_id = $1 "
                "AND status IN ('pending', 'retry_scheduled'))",
                campaign_id,
            )
        dial_window = last - started
        deadline = time.monotonic() + 600
        for _ in range(60000):  # the calls in progress end; bounded by `deadline`
            status = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
            if status == "completed" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        finished = time.perf_counter()
        cpu = cpu_seconds(pid) - cpu0
        row = await conn.fetchrow(
            """
            SELECT count(*) AS dials,
                   avg(extract(epoch FROM c.ended_at - c.created_at)) AS held_s,
                   min(c.created_at) - (SELECT started_at FROM campaigns WHERE id = $1) AS first
              FROM campaign_attempts a JOIN calls c ON c.id = a.call_id
             WHERE a.campaign_id = $1
            """,
            campaign_id,
        )
    finally:
        await redis.aclose()
        await conn.close()
    dials = int(row["dials"])
    held = float(row["held_s"])
    return {
        "dials": dials,
        "dial_window_s": round(dial_window, 2),
        "total_s": round(finished - started, 2),
        "pool_utilisation": round(busy_area / (channels * dial_window), 3),
        "dials_per_s": round(dials / (finished - started), 2),
        "ceiling_dials_per_s": round(channels / held, 2),
        "mean_call_s": round(held, 3),
        "first_dial_ms": round(row["first"].total_seconds() * 1000, 1),
        "daemon_cpu_ms_per_dial": round(cpu / dials * 1000, 2) if dials else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prospects", type=int, default=10000)
    parser.add_argument("--channels", type=int, default=60)
    parser.add_argument("--hold", type=float, default=1.0, help="seconds an answered call lasts")
    args = parser.parse_args()
    with bench_services("trunkline_bench_campaign") as services:
        campaign_id = asyncio.run(provision(services.database_url, args.prospects, args.channels))
        port = free_port()
        env = daemon_env(
            services, port, TRUNKLINE_CONFIG=str(config_file(args.channels, args.hold))
        )
        daemon = spawn(["-m", "gateway.cli", "run", "--role", "all"], env)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            figures = asyncio.run(
                run(
                    services.database_url,
                    services.redis_url,
                    campaign_id,
                    args.channels,
                    daemon.pid,
                )
            )
        finally:
            daemon.terminate()
            daemon.wait(30)
    result = Result("campaign dials", figures["dials"], figures["total_s"])
    report(f"campaign: {args.prospects} prospects, {args.channels} channels", [result], **figures)


if __name__ == "__main__":
    main()
