"""kill -9 of a worker in the middle of workflow runs (a real subprocess), then another worker:
every run completes and no step's message is sent twice — a step cut short is taken again
under its key workflow:<run>:<step>, which replays the first send.

The workers run on the real clock, so the messages are transactional (exempt from calling
hours by the tenant policy): the hour decides nothing here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import redis.asyncio as aioredis

from gateway.tenants.service import Principal
from gateway.workflows import service
from gateway.workflows.schemas import WorkflowIn

RUNS = 40
CONFIG = """
[events]
sequencer_interval = 0.2
subscriber_interval = 0.3

[providers.sandbox]
receipt_delay = 0.01

[messaging]
lease_seconds = 3.0

[workflows]
interval = 0.2
lease = 2.0

[guardrails.policy]
exempt_transactional_from_calling_hours = true

[guardrails.rate_limits]
tenant = { rate = 10000.0, burst = 10000 }
api_key = { rate = 10000.0, burst = 10000 }
destination = { rate = 10000.0, burst = 10000 }
sender = { rate = 10000.0, burst = 10000 }
"""


def text(n: int) -> dict:
    body = f"Step {n} for {{{{name}}}}"
    return {"send": {"channel": "sms", "to": "{{to}}", "body": body, "purpose": "transactional"}}


STEPS = [
    text(1),
    {"wait": {"duration": "300ms"}},
    text(2),
    {"wait": {"duration": "300ms"}},
    text(3),
]


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


async def test_kill_9_mid_run(pg_pool, make_key, daemon_env, redis_url, tmp_path):
    await make_key("acme")
    tenant_id = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG)
    principal = Principal(tenant_id, "acme", "test", ("*",))
    _, wf = await service.create(
        pg_pool, principal, WorkflowIn.model_validate({"name": "crash", "steps": STEPS})
    )
    for n in range(RUNS):
        await service.start_run(
            pg_pool,
            tenant_id,
            wf["id"],
            {"to": f"+1415555{n:04d}", "name": f"P{n}"},
            trace_id=f"{n:032x}",
        )

    async def messages() -> int:
        return await pg_pool.fetchval("SELECT count(*) FROM messages")

    first = worker(daemon_env, str(config))
    try:
        await until(lambda: _at_least(messages, RUNS), timeout=60)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    at_kill = await messages()
    second = worker(daemon_env, str(config))
    try:
        await until(lambda: _all_completed(pg_pool), timeout=90)
    finally:
        second.terminate()
        second.wait(30)
    replayed = await pg_pool.fetchval(
        "SELECT count(*) FROM workflow_steps WHERE (detail->>'replayed')::boolean"
    )
    print(f"killed at {at_kill} of {RUNS * 3} messages; {replayed} steps replayed their send")
    assert at_kill < RUNS * 3, "the worker finished before it was killed: nothing was tested"

    rows = await pg_pool.fetch(
        """
        SELECT metadata->>'workflow_run_id' AS run, metadata->>'workflow_step' AS step, body
          FROM messages
        """
    )
    per_step = Counter((r["run"], r["step"]) for r in rows)
    assert len(per_step) == RUNS * 3 and set(per_step.values()) == {1}, per_step.most_common(3)
    # … and the 'network' was handed each message exactly once.
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match="tl:sandbox:sandbox:sent:*")]
        sent = [int(v) for v in await redis.mget(keys)] if keys else []
    finally:
        await redis.aclose()
    assert len(sent) == RUNS * 3 and set(sent) == {1}, Counter(sent)
    steps = await pg_pool.fetch("SELECT outcome, count(*) AS n FROM workflow_steps GROUP BY 1")
    assert {r["outcome"]: r["n"] for r in steps} == {"accepted": RUNS * 3, "elapsed": RUNS * 2}


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _all_completed(pool) -> bool:
    left = await pool.fetchval("SELECT count(*) FROM workflow_runs WHERE status <> 'completed'")
    return left == 0
