"""Opt-out by inbound SMS through the signed Twilio webhook, with Twilio played by the fake server.

STOP takes effect at once — also for a message already queued — and gets exactly one
confirmation, which itself gets through the fresh opt-out; START lifts it; HELP is answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from twilio.request_validator import RequestValidator

from gateway.app import create_app
from gateway.messages.inbound import receive
from gateway.resources import RESOURCES
from tests.fakes.twilio_server import FakeTwilio
from tests.guardrails.conftest import dispatch_ready, merged
from tests.helpers import auth

PUBLIC = "https://gw.example.com"
DID = "+14155550199"
CONSUMER = "+12125550161"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
async def gw(aiohttp_client, settings, make_key, pg_pool, fake):
    cfg = merged(
        settings,
        http={"public_base_url": PUBLIC},
        providers={
            "twilio": {
                "enabled": True,
                "account_sid": fake.account_sid,
                "auth_token": fake.auth_token,
                "api_base_url": fake.base_url,
                "timeout": 2.0,
            }
        },
        guardrails={
            "policy": {"exempt_transactional_from_calling_hours": True},
            "rate_limits": {"sender": {"rate": 100.0, "burst": 100}},  # not what is tested here
            "tenants": {
                "acme": {"help_text": "Acme alerts. Reply STOP to opt out. Help: 800-555-0100"}
            },
        },
    )
    app = create_app(cfg, role="api")  # this test runs the dispatcher itself, step by step
    client = await aiohttp_client(app)
    client.token = await make_key("acme")
    tenant_id = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    await pg_pool.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities) VALUES ($1, $2, 'twilio', '{sms}')",
        DID,
        tenant_id,
    )
    yield client
    await client.close()


async def inbound(client, fake: FakeTwilio, body: str, sid: str, *, sign: bool = True):
    params = {
        "MessageSid": sid,
        "AccountSid": fake.account_sid,
        "From": CONSUMER,
        "To": DID,
        "Body": body,
        "NumMedia": "0",
    }
    path = "/webhooks/twilio/inbound"
    signature = RequestValidator(fake.auth_token).compute_signature(PUBLIC + path, params)
    resp = await client.post(
        path, data=params, headers={"X-Twilio-Signature": signature if sign else "forged"}
    )
    return resp.status


def sent_bodies(fake: FakeTwilio) -> list[tuple[str, str, str]]:
    return [
        (r.form["To"], r.form["From"], r.form["Body"]) for r in fake.requests_to("/Messages.json")
    ]


async def send(client, **body):
    resp = await client.post("/v1/messages", json=body, headers=auth(client.token))
    return resp.status, await resp.json()


async def message(client, message_id):
    return await (await client.get(f"/v1/messages/{message_id}", headers=auth(client.token))).json()


async def test_stop_start_help_through_the_signed_webhook(gw, fake, pg_pool):
    # A message is waiting in the queue when the consumer texts STOP.
    status, queued = await send(
        gw, to=CONSUMER, body="Your table is ready", purpose="transactional"
    )
    assert status == 201 and queued["status"] == "queued" and queued["from"] == DID

    assert await inbound(gw, fake, "STOP", "SM" + "0" * 32, sign=False) == 403  # forged: ignored
    assert await pg_pool.fetchval("SELECT count(*) FROM dnc_entries") == 0
    assert await inbound(gw, fake, "Stop", "SM" + "1" * 32) == 200
    entry = await pg_pool.fetchrow(
        "SELECT source::text, tenant_id IS NOT NULL AS scoped, confirmation_message_id FROM dnc_entries WHERE number = $1",
        CONSUMER,
    )
    assert entry["source"] == "consumer_opt_out" and entry["scoped"]

    # Dispatch: the queued message is refused, the one confirmation goes out.
    assert await dispatch_ready(gw.app) == 2
    refused = await message(gw, queued["id"])
    assert refused["status"] == "rejected" and refused["error_code"] == "opted_out"
    assert [e["data"]["stage"] for e in refused["timeline"] if e["type"] == "guardrail.deny"] == [
        "dispatch"
    ]
    optout_text = gw.app[RESOURCES].settings.guardrails.policy.optout_text
    assert sent_bodies(fake) == [(CONSUMER, DID, optout_text)]
    confirmation = await message(gw, str(entry["confirmation_message_id"]))
    assert confirmation["purpose"] == "transactional" and confirmation["trace_id"]
    assert [a["outcome"] for a in confirmation["attempts"]] == ["accepted"]
    assert confirmation["metadata"] == {
        "kind": "optout_confirmation",
        "reply_to": confirmation["metadata"]["reply_to"],
    }
    # the STOP, the opt-out and the confirmation share one trace
    trace = await (
        await gw.get(f"/v1/traces/{confirmation['trace_id']}", headers=auth(gw.token))
    ).json()
    assert {"message.received", "optout.recorded", "message.accepted"} <= {
        e["type"] for e in trace["timeline"]
    }

    # Every later send is refused, whatever its purpose; a repeated STOP gets no second confirmation.
    for purpose in ("transactional", "marketing"):
        status, out = await send(gw, to=CONSUMER, body="Reply STOP to opt out. Hi", purpose=purpose)
        assert (status, out["code"]) == (422, "opted_out"), out
    assert await inbound(gw, fake, "please stop texting me", "SM" + "2" * 32) == 200
    assert await dispatch_ready(gw.app) == 0
    assert len(sent_bodies(fake)) == 1
    events = [
        r["type"]
        for r in await pg_pool.fetch(
            "SELECT type FROM events WHERE type LIKE 'optout.%' ORDER BY id"
        )
    ]
    assert events == ["optout.recorded", "optout.repeated"]

    # START lifts it (with a confirmation); sends are allowed again.
    assert await inbound(gw, fake, "START", "SM" + "3" * 32) == 200
    assert await pg_pool.fetchval("SELECT count(*) FROM dnc_entries") == 0
    status, again = await send(gw, to=CONSUMER, body="Your table is ready", purpose="transactional")
    assert status == 201 and again["status"] == "queued"
    assert await dispatch_ready(gw.app) == 2
    optin_text = gw.app[RESOURCES].settings.guardrails.policy.optin_text
    assert sorted(sent_bodies(fake)[1:]) == [
        (CONSUMER, DID, "You are resubscribed. Reply STOP to unsubscribe."),
        (CONSUMER, DID, "Your table is ready"),
    ]
    assert optin_text.startswith("You are resubscribed")

    # HELP gets the tenant's help text.
    assert await inbound(gw, fake, "help", "SM" + "4" * 32) == 200
    assert await dispatch_ready(gw.app) == 1
    assert sent_bodies(fake)[-1] == (
        CONSUMER,
        DID,
        "Acme alerts. Reply STOP to opt out. Help: 800-555-0100",
    )
    # An ordinary reply is just stored.
    assert await inbound(gw, fake, "see you at 8", "SM" + "5" * 32) == 200
    assert await dispatch_ready(gw.app) == 0


async def test_a_late_confirmation_is_not_sent(gw, fake, pg_pool):
    """The confirmation may only pass the opt-out within the window (5 minutes by default)."""
    res = gw.app[RESOURCES]
    msg = await receive(
        res.db, provider="twilio", provider_message_id="SM" + "6" * 32, channel="sms",
        from_number=CONSUMER, to_number=DID, body="UNSUBSCRIBE",
    )  # fmt: skip
    assert msg is not None
    await pg_pool.execute("UPDATE dnc_entries SET created_at = now() - interval '6 minutes'")
    assert await dispatch_ready(gw.app) == 1
    assert sent_bodies(fake) == []
    reply_id = await pg_pool.fetchval("SELECT confirmation_message_id FROM dnc_entries")
    late = await message(gw, str(reply_id))
    assert late["status"] == "rejected" and late["error_code"] == "opted_out"
