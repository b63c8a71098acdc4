"""Call tests run the real app against the test AMI server (tests/amisim), real PostgreSQL and
real Redis. Guardrails are not the point here: calls are transactional and the tenant policy
exempts transactional traffic from calling hours, and the rate limits are wide open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.pipeline.calls import VOICE
from tests.amisim import AMISimServer
from tests.helpers import auth

CUSTOMER = "+14155550100"
OPEN = {"rate": 10000.0, "burst": 10000}


def deep_merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value
    return into


def call_settings(database_url: str, redis_url: str, *, ami_port: int | None, **sections: Any):
    from gateway.settings import load_settings

    base: dict[str, Any] = {
        "database": {"url": database_url, "min_size": 1, "max_size": 20},
        "redis": {"url": redis_url},
        "http": {"port": 0, "shutdown_timeout": 5},
        "events": {
            "sequencer_interval": 0.2,
            "subscriber_interval": 0.2,
            "sse_flush_interval": 0.005,
        },
        "providers": {"sandbox": {"receipt_delay": 0.01}, "voice": {"primary": "sandbox"}},
        "pools": {
            "sizes": {"api": 4, "campaign": 4, "ivr": 1},
            "reconcile_min_age": 0.5,
            "renew_interval": 1.0,
        },
        "calls": {"sandbox_call_duration": 0.3, "sandbox_ring_seconds": 0.05, "pool_wait": 0.3},
        "guardrails": {
            "policy": {"exempt_transactional_from_calling_hours": True},
            "rate_limits": {"tenant": OPEN, "api_key": OPEN, "destination": OPEN, "sender": OPEN},
        },
    }
    if ami_port is not None:
        base["asterisk"] = {
            "main": {
                "host": "127.0.0.1",
                "port": ami_port,
                "username": "gateway",
                "secret": "secret",
                "action_timeout": 1.0,
                "connect_timeout": 1.0,
                "reconnect_backoff_initial": 0.01,
                "reconnect_backoff_max": 0.05,
                "tracker_lease": 3.0,
            }
        }
        base["providers"]["voice"] = {"primary": "asterisk:main"}
    return load_settings(**deep_merge(base, sections))


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings sections a test module changes (override this fixture)."""
    return {}


@pytest.fixture
def settings(database_url, redis_url, ami, overrides):
    return call_settings(database_url, redis_url, ami_port=ami.port, **overrides)


class Voice:
    """What a test does with the calls API, plus waits on the outcome."""

    def __init__(self, client, token: str) -> None:
        self.client = client
        self.token = token

    @property
    def runtime(self):
        return self.client.app[VOICE]

    async def place(self, *, expect: int = 201, headers: dict | None = None, **body: Any) -> dict:
        body = {"to": CUSTOMER, "purpose": "transactional"} | body
        resp = await self.client.post(
            "/v1/calls", json=body, headers=auth(self.token) | (headers or {})
        )
        data = await resp.json()
        assert resp.status == expect, data
        return data | {"_headers": dict(resp.headers)}

    async def get(self, call_id: str) -> dict:
        resp = await self.client.get(f"/v1/calls/{call_id}", headers=auth(self.token))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def post(self, path: str, expect: int = 202, **body: Any) -> dict:
        resp = await self.client.post(path, json=body or None, headers=auth(self.token))
        data = await resp.json()
        assert resp.status == expect, data
        return data

    async def wait(self, call_id: str, *statuses: str, timeout: float = 20.0) -> dict:
        """Poll until the call's status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        call: dict = {}
        while time.monotonic() < deadline:
            call = await self.get(call_id)
            if call["status"] in statuses:
                return call
            await asyncio.sleep(0.02)
        raise AssertionError(f"call stayed {call.get('status')!r}, wanted {statuses}: {call}")

    async def wait_event(self, call_id: str, kind: str, timeout: float = 20.0) -> dict:
        """Poll until the call's timeline holds an event of type `kind`; return the call."""
        deadline = time.monotonic() + timeout
        call: dict = {}
        while time.monotonic() < deadline:
            call = await self.get(call_id)
            if kind in types(call):
                return call
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind} in {types(call)}")

    async def pools(self) -> dict[str, dict]:
        resp = await self.client.get("/v1/pools", headers=auth(self.token))
        assert resp.status == 200
        return {p["name"]: p for p in (await resp.json())["pools"]}

    async def in_use(self, pool: str = "api") -> int:
        return (await self.pools())[pool]["in_use"]

    async def wait_in_use(self, pool: str, n: int, timeout: float = 3.0) -> None:
        """Wait until this tenant holds `n` channels of `pool`: a permit is given back just
        after the commit that ends its call, so right after the end it may still be held."""
        deadline = time.monotonic() + timeout
        while (held := await self.in_use(pool)) != n:
            assert time.monotonic() < deadline, f"{held} channels of {pool} held, wanted {n}"
            await asyncio.sleep(0.01)

    async def wait_connected(self, timeout: float = 5.0) -> None:
        for provider in self.runtime.registry.voice_providers():
            client = getattr(provider, "client", None)
            if client is not None and hasattr(client, "wait_connected"):
                await client.wait_connected(timeout)
        for tracker in self.runtime.trackers.values():
            deadline = time.monotonic() + timeout
            while not (tracker.active and tracker.reconciles):
                assert time.monotonic() < deadline, "the call tracker never became active"
                await asyncio.sleep(0.01)


async def eventually(check, timeout: float = 3.0) -> None:
    """Wait for a condition the test cannot be told about (a count, a background task)."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def types(call: dict) -> list[str]:
    return [e["type"] for e in call["timeline"]]


@pytest.fixture
async def voice(client, make_key) -> Voice:
    v = Voice(client, await make_key("acme"))
    await v.wait_connected()
    return v
