"""Workflow tests: the real app (all roles) on real PostgreSQL and Redis, SMS and voice on the
sandbox providers, and one clock — the guardrail chain's, which the engine reads too — that a
test moves a day on to see a one-day wait end (DESIGN.md, principle 12)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from gateway.messages.inbound import receive
from gateway.pipeline.wiring import CHAIN
from gateway.resources import RESOURCES
from tests.helpers import auth

OPEN = {"rate": 10000.0, "burst": 10000}
CUSTOMER = "+14155550100"  # the sandbox delivers to it; it answers calls
DID = "+14155550199"  # the tenant's number, that replies come to


class ShiftedClock:
    """The test's clock moved on by `offset` (a test says `clock.advance(days=1)`)."""

    def __init__(self, base: Callable[[], datetime]) -> None:
        self.base = base
        self.offset = timedelta()

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)

    def __call__(self) -> datetime:
        return self.base() + self.offset


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(database_url, redis_url, overrides):
    from gateway.settings import load_settings
    from tests.calls.conftest import deep_merge

    base: dict[str, Any] = {
        "database": {"url": database_url, "min_size": 1, "max_size": 20},
        "redis": {"url": redis_url},
        "http": {"port": 0, "shutdown_timeout": 5},
        "events": {"sequencer_interval": 0.1, "subscriber_interval": 0.2},
        "providers": {"sandbox": {"receipt_delay": 0.005}, "voice": {"primary": "sandbox"}},
        "pools": {"sizes": {"api": 4, "campaign": 4, "ivr": 1}, "renew_interval": 1.0},
        "calls": {"sandbox_call_duration": 0.05, "sandbox_ring_seconds": 0.05, "pool_wait": 0.5},
        "workflows": {"interval": 0.1},
        "webhooks": {"allow_private_targets": True},
        "guardrails": {
            "policy": {"exempt_transactional_from_calling_hours": True},
            "rate_limits": {"tenant": OPEN, "api_key": OPEN, "destination": OPEN, "sender": OPEN},
        },
    }
    return load_settings(**deep_merge(base, overrides))


class Flows:
    """What a test does with the workflows API."""

    def __init__(self, client, token: str, tenant_id: uuid.UUID) -> None:
        self.client = client
        self.token = token
        self.tenant_id = tenant_id
        self.clock = ShiftedClock(client.app[CHAIN].clock)
        client.app[CHAIN].clock = self.clock  # the engine reads the chain's clock

    @property
    def db(self):
        return self.client.app[RESOURCES].db

    async def post(self, path: str, body: dict[str, Any], status: int | None = None) -> Any:
        resp = await self.client.post(path, json=body, headers=auth(self.token))
        out = await resp.json()
        if status is not None:
            assert resp.status == status, out
        return out

    async def get(self, path: str) -> Any:
        resp = await self.client.get(path, headers=auth(self.token))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def define(self, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return await self.post("/v1/workflows", {"name": "t", "steps": steps, **extra}, 201)

    async def start(self, workflow_id: str, **variables: Any) -> dict[str, Any]:
        body = {"variables": variables}
        return await self.post(f"/v1/workflows/{workflow_id}/runs", body, 201)

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self.get(f"/v1/workflow-runs/{run_id}")

    async def until(
        self, run_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = await self.run(run_id)
            if check(run):
                return run
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run_id} did not get there: {run}")

    async def status(self, run_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.until(run_id, lambda r: r["status"] in statuses, timeout)

    async def reply(self, body: str, from_number: str = CUSTOMER) -> None:
        """An inbound SMS to the tenant's DID, as a provider's webhook hands it over."""
        got = await receive(
            self.db,
            provider="sandbox",
            provider_message_id=f"in-{uuid.uuid4().hex}",
            channel="sms",
            from_number=from_number,
            to_number=DID,
            body=body,
        )
        assert got is not None

    async def sent(self, run_id: str) -> list[dict[str, Any]]:
        """The messages the run sent, in step order."""
        rows = await self.db.fetch(
            """
            SELECT id, channel, to_number, body, status, trace_id, metadata FROM messages
             WHERE metadata->>'workflow_run_id' = $1 ORDER BY (metadata->>'workflow_step')::int
            """,
            run_id,
        )
        return [dict(r) for r in rows]


@pytest.fixture
async def flows(client, make_key, pg_pool) -> Flows:
    token = await make_key("acme")
    tenant_id = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    await pg_pool.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities) "
        "VALUES ($1, $2, 'sandbox', '{sms,voice}')",
        DID,
        tenant_id,
    )
    return Flows(client, token, tenant_id)
