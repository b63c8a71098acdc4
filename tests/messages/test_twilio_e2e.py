"""Messages through the Twilio adapter: the real SDK against the fake Twilio, signed receipts back."""

import pytest
from twilio.request_validator import RequestValidator

from gateway.app import create_app
from gateway.settings import load_settings
from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import EXEMPT_TRANSACTIONAL, auth
from tests.messages.test_dispatch_faults import eventually

PUBLIC = "https://gw.example.com"
SENDER = "+15005550006"


@pytest.fixture
async def fake():
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
async def twilio_client(aiohttp_client, database_url, redis_url, fake):
    settings = load_settings(
        guardrails=EXEMPT_TRANSACTIONAL,
        database={"url": database_url},
        redis={"url": redis_url},
        http={"public_base_url": PUBLIC},
        providers={
            "sms": {"primary": "twilio", "default_from": SENDER},
            "whatsapp": {"primary": "twilio", "default_from": SENDER},
            "twilio": {
                "enabled": True,
                "account_sid": fake.account_sid,
                "auth_token": fake.auth_token,
                "api_base_url": fake.base_url,
                "timeout": 2,
            },
        },
    )
    client = await aiohttp_client(create_app(settings, role="all"))
    fake.route_callbacks(PUBLIC, str(client.make_url("")))
    yield client
    await client.close()


async def test_send_via_twilio_receipts_come_back_signed_and_apply(
    twilio_client, fake, make_key, pg_pool
):
    token = await make_key("acme")
    resp = await twilio_client.post(
        "/v1/messages",
        json={"to": "+14155550123", "body": "hello", "purpose": "transactional"},
        headers=auth(token),
    )
    assert resp.status == 201, await resp.text()
    msg = await resp.json()

    async def delivered():
        return await pg_pool.fetchval(
            "SELECT status = 'delivered' FROM messages WHERE id = $1::uuid", msg["id"]
        )

    await eventually(delivered)
    [create] = fake.requests_to("/Messages.json")
    assert create.form["To"] == "+14155550123" and create.form["From"] == SENDER
    assert create.idempotency_token == f"{msg['id']}:1"
    assert (
        create.form["StatusCallback"]
        == f"{PUBLIC}/webhooks/twilio/status?trace_id={msg['trace_id']}"
    )
    detail = await (
        await twilio_client.get(f"/v1/messages/{msg['id']}", headers=auth(token))
    ).json()
    assert detail["provider"] == "twilio" and detail["provider_message_id"].startswith("SM")
    assert {"message.sent", "message.delivered"} <= {e["type"] for e in detail["timeline"]}


async def test_whatsapp_uses_twilio_addressing(twilio_client, fake, make_key):
    token = await make_key("acme")
    resp = await twilio_client.post(
        "/v1/messages",
        json={
            "channel": "whatsapp",
            "to": "+14155550123",
            "body": "hi",
            "purpose": "transactional",
        },
        headers=auth(token),
    )
    assert resp.status == 201

    async def sent():
        return fake.requests_to("/Messages.json")

    [create] = await eventually(sent)
    assert (
        create.form["To"] == "whatsapp:+14155550123" and create.form["From"] == f"whatsapp:{SENDER}"
    )


async def test_a_forged_receipt_is_rejected_and_recorded(twilio_client, fake, make_key, pg_pool):
    token = await make_key("acme")
    resp = await twilio_client.post(
        "/v1/messages",
        json={"to": "+14155550123", "body": "hello", "purpose": "transactional"},
        headers=auth(token),
    )
    msg = await resp.json()

    async def sid():
        return await pg_pool.fetchval(
            "SELECT provider_message_id FROM messages WHERE id = $1::uuid", msg["id"]
        )

    provider_sid = await eventually(sid)
    await fake.wait_callbacks()
    params = {"MessageSid": provider_sid, "MessageStatus": "failed", "AccountSid": fake.account_sid}
    url = f"{PUBLIC}/webhooks/twilio/status?trace_id={msg['trace_id']}"
    forged = RequestValidator("not-the-auth-token").compute_signature(url, params)
    resp = await twilio_client.post(
        f"/webhooks/twilio/status?trace_id={msg['trace_id']}",
        data=params,
        headers={"X-Twilio-Signature": forged},
    )
    assert resp.status == 403
    assert (await resp.json())["code"] == "invalid_signature"
    assert (
        await pg_pool.fetchval("SELECT status FROM messages WHERE id = $1::uuid", msg["id"])
        == "delivered"
    )
    assert (
        await pg_pool.fetchval(
            "SELECT count(*) FROM events WHERE type = 'webhook.signature_rejected'"
        )
        == 1
    )
    # The same request correctly signed for the public URL is accepted (and is a no-op: delivered is final).
    genuine = RequestValidator(fake.auth_token).compute_signature(url, params)
    resp = await twilio_client.post(
        f"/webhooks/twilio/status?trace_id={msg['trace_id']}",
        data=params,
        headers={"X-Twilio-Signature": genuine},
    )
    assert resp.status == 200
    assert (
        await pg_pool.fetchval("SELECT status FROM messages WHERE id = $1::uuid", msg["id"])
        == "delivered"
    )
    assert (
        await pg_pool.fetchval("SELECT count(*) FROM events WHERE type = 'message.status_noop'")
        >= 1
    )


async def test_a_flood_of_forged_receipts_writes_a_bounded_number_of_events(
    twilio_client, fake, make_key, pg_pool, redis_client
):
    """Anyone can forge receipts naming a tenant's message, as fast as they like: each is a
    403 and counted, but the tenant's timeline gets one event per window, and the next one
    says how many were left out."""
    token = await make_key("acme")
    resp = await twilio_client.post(
        "/v1/messages",
        json={"to": "+14155550123", "body": "hello", "purpose": "transactional"},
        headers=auth(token),
    )
    msg = await resp.json()

    async def sid():
        return await pg_pool.fetchval(
            "SELECT provider_message_id FROM messages WHERE id = $1::uuid", msg["id"]
        )

    provider_sid = await eventually(sid)
    await fake.wait_callbacks()
    params = {"MessageSid": provider_sid, "MessageStatus": "failed"}

    async def forge(n: int) -> None:
        for _ in range(n):
            resp = await twilio_client.post(
                "/webhooks/twilio/status", data=params, headers={"X-Twilio-Signature": "bad"}
            )
            assert resp.status == 403

    async def rejected_events() -> list:
        return await pg_pool.fetch(
            "SELECT data FROM events WHERE type = 'webhook.signature_rejected' ORDER BY id"
        )

    await forge(40)
    assert len(await rejected_events()) == 1
    metrics = await (await twilio_client.get("/metrics")).text()
    assert 'trunkline_webhook_signature_rejected_total{provider="twilio"} 40.0' in metrics
    assert 'trunkline_webhook_signature_events_suppressed_total{provider="twilio"} 39.0' in metrics
    # the window ends (its marker expires): the next forged receipt is recorded, with the count
    await redis_client.delete(
        *[k async for k in redis_client.scan_iter("tl:sigrej:*") if not k.endswith(b":suppressed")]
    )
    await forge(3)
    events = await rejected_events()
    assert len(events) == 2
    assert events[1]["data"]["suppressed"] == 39
    assert events[0]["data"]["suppressed"] == 0


async def test_permanent_twilio_error_fails_the_message_without_retry(
    twilio_client, fake, make_key, pg_pool
):
    token = await make_key("acme")
    fake.script("+14155550124", error_code=21211, fail_status=400)
    resp = await twilio_client.post(
        "/v1/messages",
        json={"to": "+14155550124", "body": "hello", "purpose": "transactional"},
        headers=auth(token),
    )
    msg = await resp.json()

    async def failed():
        return await pg_pool.fetchrow(
            "SELECT status, error_code FROM messages WHERE id = $1::uuid AND status = 'failed'",
            msg["id"],
        )

    row = await eventually(failed)
    assert row["error_code"] == "21211"
    assert len(fake.requests_to("/Messages.json")) == 1
