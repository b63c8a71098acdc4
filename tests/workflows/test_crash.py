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


async def until(check, timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


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

    # Kill a worker while a step has sent (its message is committed) and not yet recorded
    # itself done: the state a crash must not turn into a second send. Seen from outside, it
    # is a run still at a step whose message exists; after the kill it stays that way.
    cut: set[tuple[str, str]] = set()
    for _ in range(5):
        first = worker(daemon_env, str(config))
        try:
            # mid-run: once every run has sent its first text
            await until(lambda: _mid_step(pg_pool, after=RUNS), timeout=60, every=0.002)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        cut = await _mid_step(pg_pool)
        if cut:
            break
    assert cut, "no worker was killed between a send and its step's record"
    at_kill = await pg_pool.fetchval("SELECT count(*) FROM messages")
    second = worker(daemon_env, str(config))
    try:
        await until(lambda: _all_completed(pg_pool), timeout=90)
    finally:
        second.terminate()
        second.wait(30)
    print(f"killed at {at_kill} of {RUNS * 3} messages, {len(cut)} step(s) cut after the send")

    # The cut steps were taken again, and their send replayed (the same message).
    for run, step in cut:
        detail = await pg_pool.fetchval(
            "SELECT detail FROM workflow_steps WHERE run_id = $1::uuid AND step = $2",
            run,
            int(step),
        )
        assert detail.get("replayed") is True, (run, step, detail)
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


async def _mid_step(pool, after: int = 0) -> set[tuple[str, str]]:
    """(run, step) of runs still at a step whose message has been created (once there are
    `after` messages)."""
    if after and await pool.fetchval("SELECT count(*) FROM messages") < after:
        return set()
    rows = await pool.fetch(
        """
        SELECT m.metadata->>'workflow_run_id' AS run, m.metadata->>'workflow_step' AS step
          FROM messages m
          JOIN workflow_runs r ON r.id = (m.metadata->>'workflow_run_id')::uuid
         WHERE r.status = 'running' AND r.step = (m.metadata->>'workflow_step')::int
        """
    )
    return {(r["run"], r["step"]) for r in rows}


async def _all_completed(pool) -> bool:
    """Every run completed and every message it accepted handed to "the network" (it has the
    provider's id): a run's last step completes when its message is queued, and a job the
    killed worker held is taken again only once its lease lapses."""
    left = await pool.fetchval(
        """
        SELECT (SELECT count(*) FROM workflow_runs WHERE status <> 'completed')
             + (SELECT count(*) FROM messages
                 WHERE provider_message_id IS NULL AND status IN ('scheduled', 'queued'))
        """
    )
    return left == 0
