"""Event-log tests run the real app with short timers (no long sleeps anywhere)."""

from __future__ import annotations

import uuid

import pytest

from tests.events.support import fast_settings


@pytest.fixture
def settings(database_url: str, redis_url: str):
    return fast_settings(database_url, redis_url)


@pytest.fixture
def app_client(database_url, redis_url, aiohttp_client):
    """A client for an app with other settings or another role (asks for the database
    first, so the app is closed before the test's database is dropped)."""
    from gateway.app import create_app

    async def make(role: str = "all", **overrides):
        settings = fast_settings(database_url, redis_url, **overrides)
        return await aiohttp_client(create_app(settings, role=role))

    return make


@pytest.fixture
def tenant_id(pg_pool):
    async def lookup(name: str) -> uuid.UUID:
        return await pg_pool.fetchval("SELECT id FROM tenants WHERE name = $1", name)

    return lookup
