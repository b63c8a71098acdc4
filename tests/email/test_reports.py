"""Bounces and complaints that arrive later: the signed, normalised webhook, and DSN / ARF
mail posted raw. Both move the email forward and suppress the address."""

import json
import pathlib

import pytest

from gateway.webhooks import signing
from tests.email.conftest import WEBHOOK_SECRET, email_settings, send_email
from tests.helpers import auth

SAMPLES = pathlib.Path(__file__).parent / "samples"


@pytest.fixture
def settings(database_url, redis_url, smtp_server):
    return email_settings(
        database_url,
        redis_url,
        providers={
            "email": {"primary": "smtp", "default_from": "billing@acme.example"},
            "smtp": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": smtp_server.port,
                "security": "none",
            },
        },
    )


def signed(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    return {signing.HEADER: signing.sign(secret, body)}


async def _sent(client, token, wait_status, to: str) -> dict:
    msg = await (await send_email(client, token, to=to)).json()
    return await wait_status(msg["id"], "sent")


def sample(name: str, *, message_id: str, recipient: str) -> bytes:
    text = (SAMPLES / name).read_text()
    return text.replace("{message_id}", message_id).replace("{recipient}", recipient).encode()


async def test_a_dsn_bounce_moves_the_email_and_suppresses_the_address(client, token, wait_status):
    sent = await _sent(client, token, wait_status, "gone@example.com")
    raw = sample("dsn_hard_bounce.eml", message_id=sent["id"], recipient="gone@example.com")
    resp = await client.post(
        "/webhooks/email/dsn", data=raw, headers={"Content-Type": "message/rfc822"} | signed(raw)
    )
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"applied": 1, "ignored": 0}
    done = await wait_status(sent["id"], "bounced")
    assert done["error_code"] == "5.1.1" and "User unknown" in done["error_detail"]
    bounced = next(e for e in done["timeline"] if e["type"] == "message.bounced")
    assert bounced["data"]["source"] == "smtp:dsn"
    resp = await send_email(client, token, to="gone@example.com")
    assert (await resp.json())["code"] == "email_suppressed"
    # the same DSN again: a recorded no-op, nothing applied backwards
    resp = await client.post("/webhooks/email/dsn", data=raw, headers=signed(raw))
    assert resp.status == 200
    detail = await (await client.get(f"/v1/messages/{sent['id']}", headers=auth(token))).json()
    assert detail["status"] == "bounced"
    assert [e["type"] for e in detail["timeline"]].count("message.status_noop") == 1


async def test_an_arf_complaint_and_a_delay_notice(client, token, wait_status):
    sent = await _sent(client, token, wait_status, "ana@example.com")
    delayed = sample("dsn_delayed.eml", message_id=sent["id"], recipient="ana@example.com")
    resp = await client.post("/webhooks/email/dsn", data=delayed, headers=signed(delayed))
    assert await resp.json() == {"applied": 1, "ignored": 0}
    detail = await (await client.get(f"/v1/messages/{sent['id']}", headers=auth(token))).json()
    assert detail["status"] == "sent"  # a delay is news, not an outcome
    delay = next(e for e in detail["timeline"] if e["type"] == "message.delivery_delayed")
    assert delay["data"]["status"] == "4.4.1"
    arf = sample("arf_complaint.eml", message_id=sent["id"], recipient="ana@example.com")
    resp = await client.post("/webhooks/email/dsn", data=arf, headers=signed(arf))
    assert await resp.json() == {"applied": 1, "ignored": 0}
    await wait_status(sent["id"], "complained")
    resp = await send_email(client, token, to="ana@example.com")
    assert (await resp.json())["rule"] == "email_suppression.complaint"
    # mail that is not a report, or a report about mail we never sent, changes nothing
    for raw in (
        b"Subject: hello\r\n\r\nnot a report",
        sample("arf_complaint.eml", message_id="x", recipient="b@example.com"),
    ):
        resp = await client.post("/webhooks/email/dsn", data=raw, headers=signed(raw))
        assert resp.status == 200
        assert (await resp.json())["applied"] == 0


async def test_the_normalised_webhook(client, token, wait_status):
    one = await _sent(client, token, wait_status, "one@example.com")
    two = await _sent(client, token, wait_status, "two@example.com")
    three = await _sent(client, token, wait_status, "three@example.com")
    body = json.dumps(
        {
            "events": [
                {
                    "type": "bounce",
                    "message_id": f"<{one['provider_message_id']}>",
                    "recipient": "one@example.com",
                    "status": "5.1.1",
                    "diagnostic": "550 5.1.1 no such user",
                    "provider": "relay",
                },
                {
                    "type": "complaint",
                    "message_id": two["id"],
                    "recipient": "two@example.com",
                    "provider": "relay",
                },
                {
                    "type": "bounce",
                    "bounce_type": "transient",
                    "message_id": three["id"],
                    "status": "4.2.2",
                    "diagnostic": "mailbox full",
                    "provider": "relay",
                },
                {
                    "type": "delivered",
                    "message_id": "<not-ours@elsewhere.example>",
                    "provider": "relay",
                },
            ]
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    resp = await client.post("/webhooks/email/events", data=body, headers=headers | signed(body))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"applied": 3, "ignored": 1}
    bounced = await wait_status(one["id"], "bounced")
    assert (
        next(e for e in bounced["timeline"] if e["type"] == "message.bounced")["data"]["source"]
        == "webhook:relay"
    )
    await wait_status(two["id"], "complained")
    detail = await (await client.get(f"/v1/messages/{three['id']}", headers=auth(token))).json()
    assert detail["status"] == "sent"  # a transient bounce is a delay: not suppressed
    listed = await (await client.get("/v1/email/suppressions", headers=auth(token))).json()
    assert sorted((s["address"], s["reason"]) for s in listed["data"]) == [
        ("one@example.com", "bounce"),
        ("two@example.com", "complaint"),
    ]
    # forged, stale or unsigned: 403, nothing applied
    for bad in (
        signed(body, "whsec_wrong"),
        {signing.HEADER: signing.sign(WEBHOOK_SECRET, body, timestamp=1)},
        {},
    ):
        resp = await client.post("/webhooks/email/events", data=body, headers=headers | bad)
        assert resp.status == 403 and (await resp.json())["code"] == "invalid_signature"
        resp = await client.post("/webhooks/email/dsn", data=body, headers=bad)
        assert resp.status == 403


async def test_email_webhooks_answer_404_when_not_configured(
    aiohttp_client, database_url, redis_url
):
    from gateway.app import create_app

    settings = email_settings(database_url, redis_url, email={"webhook_secret": None})
    client = await aiohttp_client(create_app(settings))
    body = b'{"events": [{"type": "delivered", "message_id": "x"}]}'
    resp = await client.post(
        "/webhooks/email/events",
        data=body,
        headers={"Content-Type": "application/json"} | signed(body),
    )
    assert resp.status == 404
    await client.close()
