"""A campaign on the sandbox: pool utilisation, dials/s beside their ceiling, dialer CPU per dial,
first-dial latency — and where utilisation is lost.

The daemon (`--role all`) runs as its own process with the sandbox voice provider and a
`campaign` pool of `--channels`; the campaign dials `--prospects` numbers of the sandbox list
profile (+1 NPA 555 2xyz: answers, no answers, busy, machines…) with max_concurrent = the
pool. While prospects remain to be dialled, this process samples the pool's holders in Redis
every 50 ms: utilisation is their time-weighted mean over the pool size (aim ≥ 90 %).

Printed beside each other: utilisation and its aim; dials/s achieved and the ceiling
channels ÷ mean channel time (a channel is held from the dispatch's permit — the call's
`attempt_started` — to the call's end); the first dial (its `call.originated`) after `start`;
CPU per dial — the daemon's (API, pipeline, sandbox and dialer: /proc) and the dialer's own
share of it (py-spy samples of the daemon, `--nonblocking`, whose stack is in campaigns/; off
with `--no-profile` or without py-spy). Where utilisation goes: a channel's turnover gap (a
permit released → the next permit taken, while work remains) and the dial lead time (a
prospect claimed → its call accepted → its permit taken), means and p90s from the event log.

    python -m bench.campaign [--prospects 10000] [--channels 60] [--hold 1.0] [--lead 0.25]
                             [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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


def config_file(channels: int, hold: float, lead: float | None = None) -> Path:
    text = "" if lead is None else f"[campaigns]\ndial_lead = {lead}\n"
    text += f"""
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
        cpu_window = cpu_seconds(pid) - cpu0
        dials_in_window = await conn.fetchval(
            "SELECT count(*) FROM campaign_attempts WHERE campaign_id = $1", campaign_id
        )
        deadline = time.monotonic() + 600
        for _ in range(60000):  # the calls in progress end; bounded by `deadline`
            status = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
            if status == "completed" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        finished = time.perf_counter()
        row = await conn.fetchrow(_FIGURES, campaign_id)
        losses = await conn.fetchrow(_LOSSES, campaign_id)
    finally:
        await redis.aclose()
        await conn.close()
    dials = int(row["dials"])
    held = float(row["held_s"])
    ms = _ms
    return {
        "dials": dials,
        "dial_window_s": round(dial_window, 2),
        "total_s": round(finished - started, 2),
        "pool_utilisation": round(busy_area / (channels * dial_window), 3),
        "pool_utilisation_aim": 0.9,
        "dials_per_s": round(dials / (finished - started), 2),
        "ceiling_dials_per_s": round(channels / held, 2),
        "mean_channel_s": round(held, 3),
        "first_dial_ms": ms(row["first"]),
        "daemon_cpu_ms_per_dial": round(cpu_window / dials_in_window * 1000, 2)
        if dials_in_window
        else None,
        "turnover_gap_ms_mean": ms(losses["gap_mean"]),
        "turnover_gap_ms_p90": ms(losses["gap_p90"]),
        "lead_claim_to_accept_ms_mean": ms(losses["accept_mean"]),
        "lead_accept_to_permit_ms_mean": ms(losses["permit_mean"]),
        "lead_claim_to_permit_ms_p90": ms(losses["lead_p90"]),
    }


def _ms(value: Any) -> float | None:
    return None if value is None else round(value.total_seconds() * 1000, 1)


# Each attempt's channel: taken at `attempt_started`, given back at the call's end.
_FIGURES = """
WITH held AS (
    SELECT c.id, c.ended_at,
           (SELECT min(e.created_at) FROM events e
             WHERE e.subject = c.id::text AND e.type = 'call.attempt_started') AS taken,
           (SELECT min(e.created_at) FROM events e
             WHERE e.subject = c.id::text AND e.type = 'call.originated') AS originated
      FROM campaign_attempts a JOIN calls c ON c.id = a.call_id
     WHERE a.campaign_id = $1)
SELECT count(*) AS dials,
       avg(extract(epoch FROM ended_at - taken)) AS held_s,
       min(originated) - (SELECT started_at FROM campaigns WHERE id = $1) AS first
  FROM held
"""

# Where utilisation goes, while prospects remained (up to the last claim): the gap from a
# permit given back to the next one taken, and the dial's lead time claim → accept → permit.
_LOSSES = """
WITH ev AS (
    SELECT e.type, e.created_at, e.subject, e.data
      FROM events e
     WHERE e.type IN ('call.permit_released', 'call.attempt_started')
       AND e.subject IN (SELECT call_id::text FROM campaign_attempts WHERE campaign_id = $1)),
last_claim AS (
    SELECT max(created_at) AS at FROM events
     WHERE subject = $1::text AND type = 'campaign.prospect.dialing'),
marked AS (  -- for each event, the first permit taken at or after it (a suffix minimum)
    SELECT type, created_at,
           min(created_at) FILTER (WHERE type = 'call.attempt_started')
               OVER (ORDER BY created_at DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
               AS next_taken
      FROM ev),
releases AS (
    SELECT created_at AS released, next_taken FROM marked
     WHERE type = 'call.permit_released' AND created_at < (SELECT at FROM last_claim)),
claims AS (
    SELECT (d.data->>'prospect_id')::bigint AS prospect_id, (d.data->>'n')::int AS n,
           d.created_at AS claimed
      FROM events d
     WHERE d.subject = $1::text AND d.type = 'campaign.prospect.dialing'),
leads AS (
    SELECT c.claimed, a.created_at AS accepted,
           (SELECT min(e.created_at) FROM events e
             WHERE e.subject = a.call_id::text AND e.type = 'call.attempt_started') AS taken
      FROM claims c
      JOIN campaign_attempts a ON a.prospect_id = c.prospect_id AND a.n = c.n)
SELECT (SELECT avg(next_taken - released) FROM releases) AS gap_mean,
       (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY next_taken - released)
          FROM releases) AS gap_p90,
       (SELECT avg(accepted - claimed) FROM leads) AS accept_mean,
       (SELECT avg(taken - accepted) FROM leads) AS permit_mean,
       (SELECT percentile_cont(0.9) WITHIN GROUP (ORDER BY taken - claimed) FROM leads)
           AS lead_p90
"""


def dialer_share(raw: Path) -> float | None:
    """Of the daemon's on-CPU samples (py-spy raw: "frame;frame;… count"), after start-up
    imports, the share whose stack is in campaigns/ — the dialer's own work."""
    total = mine = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "_find_and_load" in stack:
            continue
        total += int(count)
        if "campaigns/" in stack and "gateway/campaigns/http" not in stack:
            mine += int(count)
    return mine / total if total else None


def child_pid(pid: int, timeout: float = 10.0) -> int:
    """The process py-spy started (its only child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy started no daemon")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prospects", type=int, default=10000)
    parser.add_argument("--channels", type=int, default=60)
    parser.add_argument("--hold", type=float, default=1.0, help="seconds an answered call lasts")
    parser.add_argument(
        "--lead", type=float, default=None, help="campaigns.dial_lead (default: the setting's)"
    )
    parser.add_argument("--no-profile", action="store_true", help="no py-spy (no dialer share)")
    args = parser.parse_args()
    spy = None if args.no_profile else shutil.which("py-spy", path=str(Path(sys.executable).parent))
    raw = Path(tempfile.mkdtemp(prefix="tl-bench-campaign-")) / "spy.txt"
    with bench_services("trunkline_bench_campaign") as services:
        campaign_id = asyncio.run(provision(services.database_url, args.prospects, args.channels))
        port = free_port()
        env = daemon_env(
            services,
            port,
            TRUNKLINE_CONFIG=str(config_file(args.channels, args.hold, args.lead)),
        )
        command = ["-m", "gateway.cli", "run", "--role", "all"]
        if spy:
            argv = [spy, "record", "--nonblocking", "-r", "50", "-f", "raw", "-o", str(raw)]
            launched = subprocess.Popen([*argv, "--", sys.executable, *command], env=env)
            pid = child_pid(launched.pid)
        else:
            launched = spawn(command, env)
            pid = launched.pid
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            figures = asyncio.run(
                run(services.database_url, services.redis_url, campaign_id, args.channels, pid)
            )
        finally:
            os.kill(pid, signal.SIGTERM)
            launched.wait(60)
    share = dialer_share(raw) if spy and raw.exists() else None
    cpu = figures["daemon_cpu_ms_per_dial"]
    figures["dialer_share_of_daemon_cpu"] = None if share is None else round(share, 3)
    figures["dialer_cpu_ms_per_dial"] = (
        None if share is None or cpu is None else round(cpu * share, 3)
    )
    result = Result("campaign dials", figures["dials"], figures["total_s"])
    report(f"campaign: {args.prospects} prospects, {args.channels} channels", [result], **figures)
    print(
        f"\nutilisation {figures['pool_utilisation']:.1%} of {args.channels} (aim 90 %) | "
        f"dials/s {figures['dials_per_s']} (ceiling {figures['ceiling_dials_per_s']}) | "
        f"dialer CPU {figures['dialer_cpu_ms_per_dial']} ms/dial "
        f"(daemon {cpu}) | first dial {figures['first_dial_ms']} ms"
    )


if __name__ == "__main__":
    main()
