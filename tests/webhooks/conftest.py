"""Webhook tests run the real app with short timers (no long sleeps anywhere)."""

from __future__ import annotations

import pytest

from tests.events.conftest import app_client, settings, tenant_id  # noqa: F401  (shared fixtures)


@pytest.fixture
async def receiver(database_url, aiohttp_server):
    from aiohttp import web

    from tests.webhooks.receiver import Receiver

    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = await aiohttp_server(app)
    rec.url = str(server.make_url("/hook"))
    return rec
