"""Campaign tests: the real app (all roles) on real PostgreSQL and Redis, voice and SMS on the
sandbox providers with short delays, and the guardrail chain's clock pinned to a Wednesday
noon in California — the campaign window and calling hours are read on it, so no test
depends on the hour at which it runs (DESIGN.md, principle 12)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.campaigns.tasks import DIALER
from gateway.pipeline.wiring import CHAIN
from tests.helpers import auth

OPEN = {"rate": 10000.0, "burst": 10000}
# A plain Wednesday (no holiday), noon in Los Angeles, 15:00 in New York: every US zone is
# inside calling hours and inside the default campaign window (mon-fri 09:00-20:00).
NOON = datetime(2026, 6, 10, 12, 0, tzinfo=ZoneInfo("America/Los_Angeles"))


class PinnedClock:
    """Starts at `start` and runs with real (monotonic) time from there."""

    def __init__(self, start: datetime) -> None:
        self.start = start.astimezone(UTC)
        self.t0 = time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self.t0)


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
        "events": {"sequencer_interval": 0.2, "subscriber_interval": 0.5},
        "providers": {"sandbox": {"receipt_delay": 0.005}, "voice": {"primary": "sandbox"}},
        "pools": {
            "sizes": {"api": 4, "campaign": 32, "ivr": 1},
            "renew_interval": 1.0,
            "retry_after_max": 1.0,
        },
        "calls": {"sandbox_call_duration": 0.05, "sandbox_ring_seconds": 0.05, "pool_wait": 0.5},
        "guardrails": {
            "rate_limits": {"tenant": OPEN, "api_key": OPEN, "destination": OPEN, "sender": OPEN},
        },
    }
    return load_settings(**deep_merge(base, overrides))


class Campaigns:
    """What a test does with the campaigns API."""

    def __init__(self, client, token: str) -> None:
        self.client = client
        self.token = token

    @property
    def db(self):
        from gateway.resources import RESOURCES

        return self.client.app[RESOURCES].db

    async def request(
        self, method: str, path: str, expect: int, body: Any = None, headers: dict | None = None
    ) -> dict:
        resp = await self.client.request(
            method, path, json=body, headers=auth(self.token) | (headers or {})
        )
        data = await resp.json()
        assert resp.status == expect, (resp.status, data)
        return data

    async def create(self, expect: int = 201, **body: Any) -> dict:
        body = {"name": "spring", "channel": "voice"} | body
        return await self.request("POST", "/v1/campaigns", expect, body)

    async def add(self, campaign_id: str, prospects: list[dict], expect: int = 200) -> dict:
        return await self.request(
            "POST", f"/v1/campaigns/{campaign_id}/prospects", expect, {"prospects": prospects}
        )

    async def get(self, campaign_id: str, expect: int = 200) -> dict:
        return await self.request("GET", f"/v1/campaigns/{campaign_id}", expect)

    async def act(self, campaign_id: str, action: str, expect: int = 200) -> dict:
        return await self.request("POST", f"/v1/campaigns/{campaign_id}/{action}", expect)

    async def wait(
        self, campaign_id: str, done: Callable[[dict], bool], timeout: float = 60.0
    ) -> dict:
        # The status column is polled (cheap); the full GET — counts and rate statistics, a
        # real load on the app under test — only when the status moved, or every 2 s.
        deadline = time.monotonic() + timeout
        campaign: dict = {}
        seen, fetched_at = None, 0.0
        while time.monotonic() < deadline:
            status = await self.db.fetchval(
                "SELECT status FROM campaigns WHERE id = $1::uuid", campaign_id
            )
            if status != seen or time.monotonic() - fetched_at >= 2.0:
                seen, fetched_at = status, time.monotonic()
                campaign = await self.get(campaign_id)
                if done(campaign):
                    return campaign
            await asyncio.sleep(0.1)
        stuck = await self.db.fetch(
            """
            SELECT p.id, p.number, p.status, p.attempts, p.claimed_at, a.n, c.status AS call,
                   c.error_code, (SELECT string_agg(type, ',' ORDER BY id) FROM events e
                                   WHERE e.subject = c.id::text) AS timeline
              FROM campaign_prospects p
              LEFT JOIN campaign_attempts a ON a.prospect_id = p.id AND a.n = p.attempts
              LEFT JOIN calls c ON c.id = a.call_id
             WHERE p.campaign_id = $1 AND p.status IN ('pending', 'dialing', 'retry_scheduled')
             LIMIT 10
            """,
            uuid.UUID(campaign_id),
        )
        raise AssertionError(
            f"campaign did not get there in {timeout}s: {campaign['prospects']}; "
            f"open prospects: {[dict(r) for r in stuck]}"
        )


@pytest.fixture
async def campaigns(client, make_key) -> Campaigns:
    client.app[CHAIN].clock = PinnedClock(NOON)
    dialer = client.app[DIALER]
    dialer.interval = 0.1
    return Campaigns(client, await make_key("acme"))
