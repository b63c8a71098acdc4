"""kill -9 of the worker in the middle of a Stripe export (a real subprocess), then another
worker: the usage of 3 tenants reaches Stripe exactly once. The fake Stripe takes part of a
batch and never answers the third request; the worker is killed while it waits; the next
worker sends the batch again with the same identifiers and the fake drops what it has."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

from tests.billing.conftest import API_KEY, METERS, add_tenant, add_usage, billed_in_db

CONFIG = """
[events]
sequencer_interval = 0.2

[billing.stripe]
api_key = "{key}"
api_base = "{base}"
meter_events_base = "{base}"
batch_size = 400
interval = 0.2
retry_initial = 0.1
retry_max = 0.5
timeout = 60.0

[billing.stripe.meters]
{meters}
"""


def worker(env: dict[str, str], config: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--config", config, "run", "--role", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_kill_9_mid_export_bills_every_unit_once(pg_pool, daemon_env, fake_stripe, tmp_path):
    spread = timedelta(seconds=61)  # one row a minute: one meter event per usage row
    for name in ("acme", "globex", "initech"):
        tenant = await add_tenant(pg_pool, name, f"cus_{name}")
        await add_usage(pg_pool, tenant, "sms_segment", [1, 2, 3, 4] * 25, spread=spread)
        await add_usage(pg_pool, tenant, "voice_call", [1] * 50, spread=spread)
        await add_usage(pg_pool, tenant, "voice_second", list(range(1, 51)), spread=spread)
        await add_usage(pg_pool, tenant, "email", [1] * 50, spread=spread)
    expected = await billed_in_db(pg_pool)
    assert len(expected) == 12  # 3 tenants x 4 kinds
    config = tmp_path / "worker.toml"
    meters = "\n".join(f'{unit} = "{name}"' for unit, name in METERS.items())
    config.write_text(CONFIG.format(key=API_KEY, base=fake_stripe.base_url, meters=meters))
    fake_stripe.stall_request(3)  # takes the third 100 events, never answers

    first = worker(daemon_env, str(config))
    try:
        await asyncio.wait_for(fake_stripe.stalled.wait(), timeout=60)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    fake_stripe.release()

    # Stripe has 300 events of the first batch; the database says it was never acknowledged.
    assert len(fake_stripe.events) == 300
    batches = await pg_pool.fetch(
        "SELECT id, records, events, sent_at FROM billing_export_batches ORDER BY id"
    )
    assert [(b["records"], b["events"], b["sent_at"]) for b in batches] == [(400, 400, None)]
    taken_before = [r.identifiers for r in fake_stripe.requests]

    second = worker(daemon_env, str(config))
    try:
        deadline = time.monotonic() + 60
        while await _unacknowledged(pg_pool):
            assert time.monotonic() < deadline, "the export did not finish"
            await asyncio.sleep(0.2)
    finally:
        second.terminate()
        second.wait(30)

    assert fake_stripe.totals() == expected  # every unit billed, none twice
    assert fake_stripe.rejected == []
    assert len(fake_stripe.events) == 750
    # The batch went again with the same identifiers: Stripe dropped the 300 it had.
    assert fake_stripe.duplicates == 300
    resent = [r.identifiers for r in fake_stripe.requests[3:6]]
    assert resent == taken_before
    assert all(r.accepted == 0 for r in fake_stripe.requests[3:6])
    sent = await pg_pool.fetch("SELECT records, sent_at FROM billing_export_batches ORDER BY id")
    assert [b["records"] for b in sent] == [400, 350]
    assert all(b["sent_at"] is not None for b in sent)


async def _unacknowledged(pg_pool) -> int:
    return await pg_pool.fetchval(
        """
        SELECT count(*) FROM usage_records u
        LEFT JOIN billing_export_batches b ON b.id = u.export_batch
        WHERE b.sent_at IS NULL
        """
    )
