"""Fixtures for the guardrail tests that need the real chain on real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway import queue
from gateway.core.actions import OutboundAction
from gateway.core.ids import new_id
from gateway.pipeline.accept import DISPATCH_QUEUE
from gateway.pipeline.dispatch import MessageDispatcher
from gateway.pipeline.wiring import CHAIN, PROVIDERS
from gateway.providers.health import ProviderHealth
from gateway.resources import RESOURCES
from gateway.settings import Settings
from guardrails.chain import GuardrailChain
from guardrails.checks import build_checks
from guardrails.policy import GuardrailPolicy

OPT_OUT_LINE = "Reply STOP to opt out."


def merged(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """`settings` with some sections (deep-)updated, validated like a config file would be."""
    data = settings.model_dump()

    def deep(into: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                deep(into[key], value)
            else:
                into[key] = value

    deep(data, sections)
    return Settings(**data)


@pytest.fixture
async def make_chain(
    pg_pool, redis_client, settings, guardrail_clock
) -> AsyncIterator[Callable[..., GuardrailChain]]:
    """A chain built exactly as the app builds it, from settings with some overrides, on the
    test's guardrail clock (tests/conftest.py) unless the test passes `now` or sets one."""
    made: list[GuardrailChain] = []

    def make(**sections: dict[str, Any]) -> GuardrailChain:
        policy = GuardrailPolicy.from_settings(merged(settings, **sections))
        checks = build_checks(policy, pg_pool, redis_client)
        made.append(GuardrailChain(checks, clock=guardrail_clock, policy=policy))
        return made[-1]

    yield make
    for chain in made:  # their own Redis connections (the client is the fixture's)
        await chain.aclose()


@pytest.fixture
async def tenant(pg_pool) -> tuple[uuid.UUID, str]:
    tid = new_id()
    await pg_pool.execute("INSERT INTO tenants (id, name) VALUES ($1, 'acme')", tid)
    return tid, "acme"


def action(tenant_id: uuid.UUID, to: str = "+12125550143", **kw: Any) -> OutboundAction:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "subject": str(new_id()),
        "channel": "sms",
        "to": to,
        "from_": None,
        "purpose": "marketing",
        "trace_id": "t" * 32,
        "body": f"Big sale today. {OPT_OUT_LINE}",
        "key_id": "k" * 16,
    }
    return OutboundAction(**(fields | kw))


async def dispatch_ready(app) -> int:
    """Claim and run every due dispatch job once, as a worker would (for role='api' apps)."""
    res = app[RESOURCES]
    dispatcher = MessageDispatcher(
        res.db,
        app[CHAIN],
        app[PROVIDERS],
        ProviderHealth(res.redis, res.db, res.settings.providers.breaker),
    )
    jobs = await queue.claim(res.db, DISPATCH_QUEUE, "test-worker", limit=1000, lease=30)
    for job in jobs:
        try:
            await dispatcher(job)
        except queue.Reschedule as exc:
            await queue.reschedule(res.db, job, "test-worker", exc.until, str(exc), delay=exc.delay)
        else:
            await queue.complete(res.db, job, "test-worker")
    return len(jobs)
