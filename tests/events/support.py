"""Shared by the event and webhook tests: fast settings and an event writer."""

from __future__ import annotations

import uuid

from gateway.events.outbox import NewEvent, emit


def fast_settings(database_url: str, redis_url: str, **overrides):
    from gateway.settings import load_settings

    events = {
        "sequencer_interval": 0.2,
        "subscriber_interval": 0.2,
        "hub_resync_interval": 0.2,
        "sse_heartbeat": 15.0,
        "sse_flush_interval": 0.005,
    } | overrides.pop("events", {})
    webhooks = {
        "allow_private_targets": True,
        "retry_base": 0.05,
        "retry_max_delay": 0.2,
        "timeout": 2.0,
    } | overrides.pop("webhooks", {})
    return load_settings(
        database={"url": database_url, "min_size": 1, "max_size": 20},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5},
        events=events,
        webhooks=webhooks,
        **overrides,
    )


async def emit_events(db_pool, tenant: uuid.UUID, n: int, type_: str = "message.delivered", **data):
    """Commit n events for a tenant in one transaction."""
    async with db_pool.acquire() as conn, conn.transaction():
        await emit(
            conn,
            *[NewEvent(tenant, type_, f"subj-{i}", "0" * 32, {"i": i, **data}) for i in range(n)],
        )
