"""Usage → Stripe meter events: batched, aggregated, exactly once, retried through outages."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from gateway.billing import repo
from gateway.billing.plan import MeterEvent
from gateway.billing.sender import MeterEventSender
from tests.billing.conftest import add_tenant, add_usage, billed_in_db, drain, stripe_config
from tests.helpers import auth, eventually


async def test_usage_of_each_kind_reaches_stripe_once(pg_pool, database_url, fake_stripe):
    acme = await add_tenant(pg_pool, "acme", "cus_acme")
    globex = await add_tenant(pg_pool, "globex", "cus_globex")
    unbilled = await add_tenant(pg_pool, "initech", None)
    await add_usage(pg_pool, acme, "sms_segment", [1, 2, 3] * 50, spread=timedelta(seconds=7))
    await add_usage(pg_pool, acme, "voice_second", [30, 61, 0, 5], spread=timedelta(minutes=3))
    await add_usage(pg_pool, acme, "voice_call", [1, 1, 1, 1], spread=timedelta(minutes=3))
    await add_usage(pg_pool, globex, "email", [1] * 40, spread=timedelta(seconds=30))
    await add_usage(pg_pool, globex, "whatsapp_message", [1] * 5)  # no meter: not exported
    await add_usage(pg_pool, unbilled, "sms_segment", [4] * 5)  # no customer: not exported
    cfg = stripe_cfg_with(fake_stripe, batch_size=120, window=60.0)

    sent = await drain(database_url, cfg)

    expected = await billed_in_db(pg_pool)
    assert expected[("cus_acme", "sms_segments")] == 300
    assert expected[("cus_acme", "voice_seconds")] == 96
    assert expected[("cus_globex", "emails")] == 40
    assert fake_stripe.totals() == expected
    assert fake_stripe.rejected == [] and fake_stripe.duplicates == 0
    # 198 exportable rows in batches of 120; within a batch, a minute of one tenant's unit is one event
    assert sent == 2
    assert sum(len(r.identifiers) for r in fake_stripe.requests) < 198
    assert all(len(r.identifiers) <= 100 for r in fake_stripe.requests)
    left = await pg_pool.fetch(
        "SELECT unit, tenant_id FROM usage_records WHERE export_batch IS NULL ORDER BY unit"
    )
    assert {(r["unit"], r["tenant_id"]) for r in left} == {
        ("whatsapp_message", globex),
        ("sms_segment", unbilled),
    }
    # A second pass finds nothing: the cursor is durable, nothing is sent twice.
    assert await drain(database_url, cfg) == 0
    assert fake_stripe.duplicates == 0 and fake_stripe.totals() == expected


async def test_a_replayed_batch_is_a_no_op_at_stripe(pg_pool, database_url, fake_stripe):
    acme = await add_tenant(pg_pool, "acme", "cus_acme")
    await add_usage(pg_pool, acme, "sms_segment", [2] * 250, spread=timedelta(minutes=1))
    cfg = stripe_cfg_with(fake_stripe)
    await drain(database_url, cfg)
    billed = fake_stripe.totals()
    assert billed == {("cus_acme", "sms_segments"): 500}
    batch_id = await pg_pool.fetchval("SELECT max(id) FROM billing_export_batches")
    events = await repo.batch_events(pg_pool, batch_id)
    assert len(events) == 250  # one a minute: one event per row

    sender = MeterEventSender(cfg)
    try:
        await sender.send(events)  # the same batch again, as a retry after a lost reply would
    finally:
        await sender.close()

    replay = fake_stripe.requests[-3:]
    assert [len(r.identifiers) for r in replay] == [100, 100, 50]
    assert all(r.accepted == 0 and r.duplicates == len(r.identifiers) for r in replay)
    assert fake_stripe.totals() == billed


async def test_a_stripe_outage_is_retried_with_backoff_not_dropped(
    pg_pool, database_url, fake_stripe
):
    acme = await add_tenant(pg_pool, "acme", "cus_acme")
    await add_usage(pg_pool, acme, "voice_call", [1] * 10)
    fake_stripe.fail_next(3, status=503)

    await asyncio.wait_for(drain(database_url, stripe_cfg_with(fake_stripe)), 30)

    assert fake_stripe.totals() == {("cus_acme", "calls"): 10}
    assert [r.status for r in fake_stripe.requests] == [503, 503, 503, 200]
    batch = await pg_pool.fetchrow(
        "SELECT attempts, last_error, sent_at FROM billing_export_batches"
    )
    assert batch["attempts"] == 3 and batch["sent_at"] is not None
    assert batch["last_error"] is None  # cleared once Stripe took the batch


async def test_an_expired_session_token_is_replaced(pg_pool, database_url, fake_stripe):
    acme = await add_tenant(pg_pool, "acme", "cus_acme")
    await add_usage(pg_pool, acme, "sms_segment", [1] * 3, spread=timedelta(minutes=2))
    cfg = stripe_cfg_with(fake_stripe)
    sender = MeterEventSender(cfg)
    try:
        first = [
            MeterEvent("trunkline-x1", acme, "sms_segment", "sms_segments", "cus_acme", 1, _now())
        ]
        await sender.send(first)
        fake_stripe.expire_sessions()  # Stripe says the token is stale before we think so
        second = [
            MeterEvent("trunkline-x2", acme, "sms_segment", "sms_segments", "cus_acme", 2, _now())
        ]
        await sender.send(second)
    finally:
        await sender.close()
    assert fake_stripe.sessions_created == 2
    assert [r.status for r in fake_stripe.requests] == [200, 200]
    assert fake_stripe.totals() == {("cus_acme", "sms_segments"): 3}


async def test_old_usage_and_usage_before_start_at_are_not_exported(
    pg_pool, database_url, fake_stripe
):
    acme = await add_tenant(pg_pool, "acme", "cus_acme")
    await add_usage(pg_pool, acme, "voice_call", [1, 1, 1], spread=timedelta(days=20))
    # rows at now, now-20d, now-40d: Stripe refuses events older than 35 days
    await drain(database_url, stripe_cfg_with(fake_stripe))
    assert fake_stripe.totals() == {("cus_acme", "calls"): 2}
    assert fake_stripe.rejected == []
    start = await pg_pool.fetchval("SELECT now() - interval '1 hour'")
    await add_usage(pg_pool, acme, "voice_second", [10, 20], spread=timedelta(hours=2))
    await drain(database_url, stripe_cfg_with(fake_stripe, start_at=start))
    assert fake_stripe.totals()[("cus_acme", "voice_seconds")] == 10


async def test_get_usage_shows_what_was_exported(client, pg_pool, make_key, fake_stripe):
    token = await make_key("acme")
    from gateway.tenants.service import set_stripe_customer

    await set_stripe_customer(pg_pool, "acme", "cus_acme")
    for _ in range(3):  # real sends, metered by the dispatcher
        resp = await client.post(
            "/v1/messages",
            json={"to": "+14155550100", "body": "Your code is 1234", "purpose": "transactional"},
            headers=auth(token),
        )
        assert resp.status == 201, await resp.text()
    period = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}

    async def exported() -> dict | None:
        body = await (await client.get("/v1/usage", params=period, headers=auth(token))).json()
        lines = {line["unit"]: line for line in body["lines"]}
        sms = lines.get("sms_segment")
        return body if sms and sms["quantity"] == 3 and sms["exported"] == 3 else None

    body = await eventually(exported, timeout=20)
    assert fake_stripe.totals() == {("cus_acme", "sms_segments"): 3}
    stripe = body["stripe"]
    assert stripe["stripe_customer_id"] == "cus_acme"
    assert stripe["meters"]["sms_segment"] == "sms_segments"
    newest = await pg_pool.fetchval("SELECT max(recorded_at) FROM usage_records")
    assert stripe["exported_through"] is not None and stripe["last_export_at"] is not None
    from datetime import datetime

    assert datetime.fromisoformat(stripe["exported_through"]) == newest


async def test_no_key_no_export(aiohttp_client, database_url, redis_url, make_key):
    """Without billing.stripe.api_key no exporter runs and /v1/usage says so (stripe: null)."""
    from gateway.app import create_app
    from gateway.settings import load_settings

    plain = load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 5},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5},
    )
    client = await aiohttp_client(create_app(plain, role="all"))
    from gateway.app import SUPERVISOR

    assert "stripe-usage-export" not in client.app[SUPERVISOR]._factories
    token = await make_key("acme")
    body = await (
        await client.get(
            "/v1/usage",
            params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
            headers=auth(token),
        )
    ).json()
    assert body["stripe"] is None and body["lines"] == []
    await client.close()


def stripe_cfg_with(fake, **overrides):
    from gateway.settings import StripeBillingSettings

    return StripeBillingSettings.model_validate(stripe_config(fake, **overrides))


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_two_workers_export_through_one_leader(pg_pool, database_url, fake_stripe):
    """Every worker runs the exporter; the advisory lock lets one work, so nothing goes twice
    (not even to be dropped by Stripe)."""
    from gateway.billing.exporter import UsageExporter

    for name in ("acme", "globex"):
        tenant = await add_tenant(pg_pool, name, f"cus_{name}")
        await add_usage(pg_pool, tenant, "sms_segment", [1] * 120, spread=timedelta(minutes=1))
    cfg = stripe_cfg_with(fake_stripe, batch_size=50)
    stopping = asyncio.Event()
    exporters = [UsageExporter(database_url, cfg) for _ in range(2)]
    tasks = [asyncio.create_task(e.run(stopping)) for e in exporters]
    try:
        await eventually(lambda: _all_sent(pg_pool), timeout=30)
    finally:
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert sorted(e.batches_sent for e in exporters) == [0, 5]  # 240 rows, 50 a batch
    assert fake_stripe.totals() == await billed_in_db(pg_pool)
    assert fake_stripe.duplicates == 0


async def _all_sent(pg_pool) -> bool:
    return not await pg_pool.fetchval(
        "SELECT count(*) FROM usage_records u "
        "LEFT JOIN billing_export_batches b ON b.id = u.export_batch WHERE b.sent_at IS NULL"
    )
