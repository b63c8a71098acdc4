"""Stripe metering tests: the real `stripe` SDK against tests/fakes/stripe_server.py."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway import db
from gateway.billing.exporter import UsageExporter
from gateway.billing.sender import MeterEventSender
from gateway.messages.repo import record_usage
from gateway.settings import StripeBillingSettings
from tests.fakes.stripe_server import FakeStripe
from tests.helpers import EXEMPT_TRANSACTIONAL

API_KEY = "sk_test_trunkline_billing"
METERS = {
    "sms_segment": "sms_segments",
    "email": "emails",
    "voice_second": "voice_seconds",
    "voice_call": "calls",
}
CHANNEL = {"sms_segment": "sms", "email": "email", "voice_second": "voice", "voice_call": "voice"}


def stripe_config(fake: FakeStripe, **overrides: object) -> dict[str, object]:
    return {
        "api_key": API_KEY,
        "api_base": fake.base_url,
        "meter_events_base": fake.base_url,
        "meters": METERS,
        "interval": 0.1,
        "retry_initial": 0.05,
        "retry_max": 0.2,
        "timeout": 5.0,
    } | overrides


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    async with FakeStripe(api_key=API_KEY, meters=frozenset(METERS.values())) as fake:
        yield fake


@pytest.fixture
def stripe_cfg(fake_stripe: FakeStripe) -> StripeBillingSettings:
    return StripeBillingSettings.model_validate(stripe_config(fake_stripe))


@pytest.fixture
def settings(database_url, redis_url, fake_stripe):
    from gateway.settings import load_settings

    return load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5},
        guardrails=EXEMPT_TRANSACTIONAL,
        billing={"stripe": stripe_config(fake_stripe)},
    )


async def add_tenant(pool: asyncpg.Pool, name: str, customer: str | None) -> uuid.UUID:
    from gateway.tenants.service import create_tenant, set_stripe_customer

    tenant_id = await create_tenant(pool, name)
    if customer is not None:
        await set_stripe_customer(pool, name, customer)
    return tenant_id


async def add_usage(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    unit: str,
    quantities: list[int],
    *,
    spread: timedelta = timedelta(0),
) -> None:
    """Usage rows as the dispatcher and the call path record them (one per subject), the i-th
    dated `spread` × i before now (so they fall in different aggregation windows)."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        for i, q in enumerate(quantities):
            subject = str(uuid.uuid4())
            await record_usage(conn, tenant_id, subject, CHANNEL.get(unit, unit), unit, q, "t")
            if spread:
                await conn.execute(
                    "UPDATE usage_records SET recorded_at = $1 WHERE subject = $2",
                    now - spread * i,
                    subject,
                )


async def billed_in_db(pool: asyncpg.Pool) -> Counter[tuple[str, str]]:
    """What should reach Stripe: usage of metered units of tenants with a customer."""
    rows = await pool.fetch(
        """
        SELECT t.stripe_customer_id AS customer, u.unit, sum(u.quantity)::bigint AS q
        FROM usage_records u JOIN tenants t ON t.id = u.tenant_id
        WHERE t.stripe_customer_id IS NOT NULL AND u.unit = ANY($1::text[])
        GROUP BY 1, 2
        """,
        list(METERS),
    )
    return Counter({(r["customer"], METERS[r["unit"]]): r["q"] for r in rows if r["q"]})


async def drain(database_url: str, cfg: StripeBillingSettings) -> int:
    """Run export rounds in-process until nothing is left; returns the batches sent."""
    import asyncio

    exporter = UsageExporter(database_url, cfg)
    conn = await db.connect(database_url)
    sender = MeterEventSender(cfg)
    try:
        while await exporter.step(conn, sender, asyncio.Event()):
            pass
    finally:
        await sender.close()
        await conn.close()
    return exporter.batches_sent
