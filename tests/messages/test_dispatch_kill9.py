"""kill -9 of a worker process while a shared batch of sends is in flight, then another
worker: every message is delivered, each reached the provider exactly once, under one attempt.

An attempt opened (committed before its send) and not yet recorded is what a crash leaves
mid-batch; the next worker reuses it, key and provider alike, and the provider answers the
same message for the same key instead of sending again."""

from __future__ import annotations

import os
import signal
from collections import Counter

import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.settings import load_settings
from tests.helpers import EXEMPT_TRANSACTIONAL, auth
from tests.workflows.test_crash import until, worker

MESSAGES = 150
CONFIG = """
[events]
sequencer_interval = 0.2
subscriber_interval = 0.3

[providers.sandbox]
receipt_delay = 0.01

[messaging]
lease_seconds = 3.0

[guardrails.policy]
exempt_transactional_from_calling_hours = true
"""


OPEN = {"rate": 10000.0, "burst": 10000}  # the test posts its 150 messages as fast as it can


async def test_kill_9_mid_batch_sends_each_message_once(
    aiohttp_client, database_url, make_key, pg_pool, daemon_env, redis_url, tmp_path
):
    settings = load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        guardrails=EXEMPT_TRANSACTIONAL
        | {"rate_limits": {k: OPEN for k in ("tenant", "api_key", "sender", "destination")}},
    )
    client = await aiohttp_client(create_app(settings, role="api"))  # accepts; sends nothing
    token = await make_key("acme")
    for n in range(MESSAGES):
        resp = await client.post(
            "/v1/messages",
            json={"to": f"+1212555{3000 + n:04d}", "body": f"m{n}", "purpose": "transactional"},
            headers=auth(token),
        )
        assert resp.status == 201, await resp.text()
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG)

    async def mid_batch() -> bool:  # attempts committed, their sends not yet recorded
        open_, done = await pg_pool.fetchrow(
            "SELECT count(*) FILTER (WHERE outcome IS NULL), count(*) FILTER (WHERE outcome IS NOT NULL)"
            " FROM message_attempts"
        )
        return open_ > 0 and done > 0

    cut = 0
    for _ in range(5):
        first = worker(daemon_env, str(config))
        try:
            await until(mid_batch, timeout=60, every=0.002)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        cut = await pg_pool.fetchval("SELECT count(*) FROM message_attempts WHERE outcome IS NULL")
        if cut:
            break
    assert cut, "no worker was killed with attempts open"
    second = worker(daemon_env, str(config))
    try:
        # Every message handed over, its job done. Not "delivered": the sandbox's receipts are
        # timers inside the worker that sent, so those of the killed worker's sends die with it
        # (a real provider's callbacks would still come; the receipt reconciler is the net).
        async def all_handed_over() -> bool:
            accepted = await pg_pool.fetchval(
                "SELECT count(DISTINCT message_id) FROM message_attempts WHERE outcome = 'accepted'"
            )
            return accepted == MESSAGES and await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0

        await until(all_handed_over, timeout=90)
    finally:
        second.terminate()
        second.wait(30)
    print(f"killed with {cut} attempt(s) open")

    attempts = await pg_pool.fetch(
        "SELECT message_id, count(*) AS n, bool_and(outcome = 'accepted') AS ok"
        " FROM message_attempts GROUP BY message_id"
    )
    assert len(attempts) == MESSAGES
    assert all(a["n"] == 1 and a["ok"] for a in attempts), [dict(a) for a in attempts][:3]
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match="tl:sandbox:sandbox:sent:*")]
        sent = [int(v) for v in await redis.mget(keys)] if keys else []
    finally:
        await redis.aclose()
    assert len(sent) == MESSAGES and set(sent) == {1}, Counter(sent)
    usage = await pg_pool.fetchval("SELECT count(*) FROM usage_records")
    assert usage == MESSAGES
    assert await pg_pool.fetchval("SELECT count(*) FROM jobs") == 0
