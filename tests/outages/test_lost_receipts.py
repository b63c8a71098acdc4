"""Issue 10 item 4, end to end: a Twilio receipt that arrives while PostgreSQL is down is
answered 503 and never sent again (Twilio does not retry), and the receipt reconciler
recovers it by asking Twilio once the database is back.

The real SDK talks to the fake Twilio; the fake's callbacks reach the in-process app; the
database is the outage servers' PostgreSQL, stopped and started as an operator would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.resources import RESOURCES
from gateway.tenants.service import create_key, create_tenant
from tests.calls.conftest import call_settings
from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import auth
from tests.outages.conftest import Outage

PUBLIC = "https://gw.example.com"
SENDER = "+15005550006"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


async def start(aiohttp_client, outage: Outage, fake: FakeTwilio) -> tuple[TestClient, str]:
    twilio = {
        "enabled": True,
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "api_base_url": fake.base_url,
        "timeout": 2,
    }
    settings = call_settings(
        outage.database_url,
        outage.redis_url,
        ami_port=None,
        database={"min_size": 1, "max_size": 10, "command_timeout": 5},
        http={"public_base_url": PUBLIC},
        providers={
            "sms": {"primary": "twilio", "default_from": SENDER},
            "voice": {"primary": "twilio", "default_from": SENDER},
            "twilio": twilio,
        },
        receipts={"interval": 0.2, "message_age": 0.5, "call_age": 0.5},
    )
    client = await aiohttp_client(create_app(settings, role="all"))
    fake.route_callbacks(PUBLIC, str(client.make_url("")).rstrip("/"))
    db = client.app[RESOURCES].db
    await create_tenant(db, "acme")
    return client, (await create_key(db, "acme")).token


async def until_status(client: TestClient, token: str, path: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = await client.get(path, headers=auth(token))
        if resp.status == 200:
            body = await resp.json()
            if body["status"] == status:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} stayed {body.get('status')!r}, wanted {status!r}")


async def test_receipts_answered_503_during_a_database_outage_are_recovered_from_twilio(
    outage: Outage, fake: FakeTwilio, aiohttp_client
) -> None:
    client, token = await start(aiohttp_client, outage, fake)
    fake.script("+14155550160", statuses=["queued", "sent"])  # delivered comes later
    fake.script("+14155550161", call_outcome="in-progress")  # hung up later
    resp = await client.post(
        "/v1/messages",
        json={"to": "+14155550160", "body": "Your code is 1234", "purpose": "transactional"},
        headers=auth(token),
    )
    assert resp.status == 201
    message_path = f"/v1/messages/{(await resp.json())['id']}"
    resp = await client.post(
        "/v1/calls", json={"to": "+14155550161", "purpose": "transactional"}, headers=auth(token)
    )
    assert resp.status == 201
    call_path = f"/v1/calls/{(await resp.json())['id']}"
    sent = await until_status(client, token, message_path, "sent")
    answered = await until_status(client, token, call_path, "answered")
    await fake.wait_callbacks()

    await outage.stop_database()
    try:
        delivered = await fake.report_message(sent["provider_message_id"], "delivered")
        completed = await fake.report_call(answered["provider_call_id"], "completed")
    finally:
        await outage.start_database()
    assert delivered is not None and delivered.status == 503, "our outage, said as such"
    assert completed is not None and completed.status == 503

    message = await until_status(client, token, message_path, "delivered")
    call = await until_status(client, token, call_path, "completed")
    assert [
        e["data"]["source"] for e in message["timeline"] if e["type"] == "message.delivered"
    ] == ["twilio:fetch"]
    assert [e["data"]["source"] for e in call["timeline"] if e["type"] == "call.completed"] == [
        "twilio:fetch"
    ]
    assert "call.permit_released" in {e["type"] for e in call["timeline"]}
