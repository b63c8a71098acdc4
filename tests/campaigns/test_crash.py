"""kill -9 of a worker in the middle of a campaign (a real subprocess), then another worker:
no attempt is dialled twice, no prospect is lost, the campaign completes.

The workers run on the real clock, so the campaign is transactional (exempt from calling
hours by the tenant policy) with a window open all week: the hour decides nothing here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import redis.asyncio as aioredis

from gateway.campaigns import service
from gateway.campaigns.schemas import CampaignIn, ProspectsIn
from tests.campaigns.test_dialer import list_numbers

CONFIG = """
[events]
sequencer_interval = 0.2
subscriber_interval = 0.5

[providers.sandbox]
receipt_delay = 0.01

[providers.voice]
primary = "sandbox"

[pools]
sizes = { api = 2, campaign = 12, ivr = 1 }
lease = 3.0
renew_interval = 1.0
retry_after_max = 1.0

[campaigns]
interval = 0.2
orphan_after = 2.0

[calls]
sandbox_call_duration = 0.2
sandbox_ring_seconds = 0.2
pool_wait = 0.5
lease_seconds = 3.0

[receipts]
interval = 0.5
call_age = 2.0

[guardrails.policy]
exempt_transactional_from_calling_hours = true

[guardrails.rate_limits]
tenant = { rate = 10000.0, burst = 10000 }
api_key = { rate = 10000.0, burst = 10000 }
destination = { rate = 10000.0, burst = 10000 }
sender = { rate = 10000.0, burst = 10000 }
"""


def worker(env: dict[str, str], config: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--config", config, "run", "--role", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def until(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_kill_9_mid_campaign(pg_pool, make_key, daemon_env, redis_url, tmp_path):
    await make_key("acme")
    tenant_id = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG)
    body = CampaignIn.model_validate(
        {
            "name": "crash",
            "purpose": "transactional",
            "pacing": {"max_concurrent": 10, "cps": 50},
            "retry": {
                "busy": {"after": "500ms"},
                "no_answer": {"after": "500ms"},
                "max_attempts": 2,
            },
            "window": {"days": "mon-sun", "start": "00:00", "end": "24:00"},
        }
    )
    _, made = await service.create(pg_pool, tenant_id, body)
    campaign_id = uuid.UUID(made["id"])
    numbers = list_numbers(100)
    prospects = ProspectsIn.model_validate({"prospects": [{"number": n} for n in numbers]})
    await service.add(pg_pool, tenant_id, campaign_id, prospects)
    await service.move(pg_pool, tenant_id, campaign_id, "start")

    async def attempts() -> int:
        return await pg_pool.fetchval("SELECT count(*) FROM campaign_attempts")

    first = worker(daemon_env, str(config))
    try:
        await until(lambda: _at_least(attempts, 30), timeout=60)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    at_kill = await attempts()
    live = await pg_pool.fetchval(
        "SELECT count(*) FROM calls WHERE status IN ('queued', 'dialing', 'ringing', 'answered')"
    )
    second = worker(daemon_env, str(config))
    try:
        await until(lambda: _completed(pg_pool, campaign_id), timeout=120)
    finally:
        second.terminate()
        second.wait(30)
    print(f"killed at {at_kill} attempts with {live} calls live")

    # Every prospect ended where its number's script says (busy twice → max_attempts, …).
    rows = await pg_pool.fetch(
        "SELECT number, status, attempts FROM campaign_prospects WHERE campaign_id = $1",
        campaign_id,
    )
    assert len(rows) == len(numbers)
    assert all(r["status"] in ("done", "max_attempts") for r in rows), Counter(
        r["status"] for r in rows
    )
    # One call per (prospect, attempt), one attempt row per attempt made…
    calls = await pg_pool.fetch(
        "SELECT metadata->>'prospect_id' AS p, metadata->>'attempt' AS n FROM calls"
    )
    assert len({(c["p"], c["n"]) for c in calls}) == len(calls)
    assert len(calls) == sum(r["attempts"] for r in rows) == await attempts()
    # … and the 'network' was asked to ring each attempt exactly once.
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match="tl:sandbox:sandbox:voice:sent:*")]
        sent = [int(v) for v in await redis.mget(keys)] if keys else []
    finally:
        await redis.aclose()
    assert len(sent) == len(calls) and set(sent) == {1}, Counter(sent)


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _completed(pool, campaign_id) -> bool:
    status = await pool.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
    return status == "completed"
