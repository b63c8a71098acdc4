"""Issue 10 item 4: with PostgreSQL or Redis down, requests answer 503 problem+json with a
stable code and Retry-After (they were 500 `internal_error` with a traceback each), and the
log says "unavailable" once and "available again" once, however many requests met it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs
from twilio.request_validator import RequestValidator

from gateway.app import create_app
from gateway.providers.twilio.voice import VOICE_STATUS_PATH
from gateway.resources import RESOURCES
from gateway.tenants.service import create_key, create_tenant
from tests.calls.conftest import call_settings
from tests.helpers import auth, eventually
from tests.outages.conftest import Outage

PROBLEM = "application/problem+json"
PUBLIC = "https://gw.example.com"
TWILIO_TOKEN = "twilio-test-token"


async def start(aiohttp_client, outage: Outage, **sections: Any) -> tuple[TestClient, str]:
    """The app (every role) on the outage servers; tests take `outage` before
    `aiohttp_client`, so the app stops before its database is dropped."""
    settings = call_settings(
        outage.database_url,
        outage.redis_url,
        ami_port=None,
        database={"min_size": 1, "max_size": 10, "command_timeout": 5},
        **sections,
    )
    client = await aiohttp_client(create_app(settings, role="all"))
    db = client.app[RESOURCES].db
    await create_tenant(db, "acme")
    return client, (await create_key(db, "acme")).token


def assert_unavailable(status: int, headers: Any, body: dict, code: str) -> None:
    assert status == 503, body
    assert headers["Content-Type"].startswith(PROBLEM)
    assert int(headers["Retry-After"]) >= 1
    assert body["status"] == 503 and body["code"] == code, body
    assert "Traceback" not in str(body)


def transitions(logs: list[dict], dependency: str) -> list[str]:
    wanted = {f"{dependency} unavailable", f"{dependency} available again"}
    return [e["event"] for e in logs if e["event"] in wanted]


def tracebacks(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e.get("exc_info") or e["event"] == "unhandled error"]


async def send(client: TestClient, token: str, key: str) -> tuple[int, Any, dict]:
    resp = await client.post(
        "/v1/messages",
        json={"to": "+14155550100", "body": "hi", "purpose": "transactional"},
        headers=auth(token) | {"Idempotency-Key": key},
    )
    return resp.status, resp.headers, await resp.json()


async def test_database_outage_answers_503_and_is_logged_once_each_way(outage, aiohttp_client):
    client, token = await start(aiohttp_client, outage)
    status, _, msg = await send(client, token, "before")
    assert status == 201, msg
    monitor = client.app[RESOURCES].outages
    with capture_logs() as logs:
        await outage.stop_database()
        for i in range(8):
            resp = await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))
            assert_unavailable(resp.status, resp.headers, await resp.json(), "database_unavailable")
            assert_unavailable(*await send(client, token, f"during-{i}"), "database_unavailable")
        await outage.start_database()

        async def back() -> bool:
            resp = await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))
            return resp.status == 200 and not monitor.is_down("database")

        await eventually(back, timeout=20)
        status, _, body = await send(client, token, "during-0")  # the same key, retried
        assert status == 201, body
    assert transitions(logs, "database") == ["database unavailable", "database available again"]
    assert tracebacks(logs) == []


async def test_redis_outage_answers_503_where_redis_is_needed_and_200_elsewhere(
    outage, aiohttp_client
):
    client, token = await start(aiohttp_client, outage)
    status, _, msg = await send(client, token, "before")
    assert status == 201, msg
    with capture_logs() as logs:
        await outage.stop_redis()
        for i in range(8):
            # Accepting needs Redis (rate limits); reading a message does not.
            assert_unavailable(*await send(client, token, f"during-{i}"), "redis_unavailable")
            resp = await client.get(f"/v1/messages/{msg['id']}", headers=auth(token))
            assert resp.status == 200
        resp = await client.get("/v1/pools", headers=auth(token))
        assert_unavailable(resp.status, resp.headers, await resp.json(), "redis_unavailable")
        await outage.start_redis()

        async def accepted() -> bool:
            status, _, _ = await send(client, token, f"after-{time.monotonic()}")
            return status == 201

        await eventually(accepted, timeout=20)
        monitor = client.app[RESOURCES].outages

        async def recovered() -> bool:
            return not monitor.is_down("redis")

        await eventually(recovered, timeout=10)
        status, _, body = await send(client, token, "during-0")  # the same key, retried
        assert status == 201 and "Idempotent-Replayed" not in body, body
    assert transitions(logs, "redis") == ["redis unavailable", "redis available again"]
    assert tracebacks(logs) == []


def signed(url: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(TWILIO_TOKEN).compute_signature(url, form)}


async def test_twilio_status_callbacks_answer_503_when_the_receipt_cannot_be_stored(
    outage, aiohttp_client
):
    """Twilio does not retry a callback; the reconciler asks Twilio later. What matters here:
    a clean 503 (not a 500 and a traceback), and nothing crashes."""
    client, _ = await start(
        aiohttp_client,
        outage,
        http={"public_base_url": PUBLIC},
        providers={
            "twilio": {"enabled": True, "account_sid": "AC" + "0" * 32, "auth_token": TWILIO_TOKEN}
        },
    )
    message = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered"}
    voice_path = f"{VOICE_STATUS_PATH}?key=0f0e0d0c-0b0a-4908-8706-050403020100:1"
    call = {"CallSid": "CA" + "2" * 32, "CallStatus": "completed", "CallDuration": "3"}
    callbacks = [
        ("/webhooks/twilio/status", message),
        (voice_path, call),
    ]
    with capture_logs() as logs:
        await outage.stop_database()
        for path, form in callbacks:
            resp = await client.post(path, data=form, headers=signed(PUBLIC + path, form))
            assert_unavailable(resp.status, resp.headers, await resp.json(), "database_unavailable")
        await outage.start_database()

        async def stored() -> bool:
            path, form = callbacks[0]
            resp = await client.post(path, data=form, headers=signed(PUBLIC + path, form))
            return resp.status == 200

        await eventually(stored, timeout=20)
        path, form = callbacks[1]
        resp = await client.post(path, data=form, headers=signed(PUBLIC + path, form))
        assert resp.status == 200
    assert tracebacks(logs) == []


async def test_openapi_documents_the_503(client):
    doc = await (await client.get("/openapi.json")).json()
    for path, method in (
        ("/v1/messages", "post"),
        ("/v1/messages/{message_id}", "get"),
        ("/v1/calls", "post"),
        ("/webhooks/twilio/status", "post"),
    ):
        assert "503" in doc["paths"][path][method]["responses"], (method, path)
    assert "503" not in doc["paths"]["/healthz"]["get"]["responses"]


async def test_an_event_stream_lives_through_a_redis_outage_said_once(outage, aiohttp_client):
    """The event hub said "event bus connection lost" every half second of an outage; now
    once, and the stream carries on with what was committed after it."""
    from tests.events.sse import SSEStream

    client, token = await start(aiohttp_client, outage)
    resp = await client.get(
        "/v1/events", headers=auth(token) | {"Accept": "text/event-stream"}, timeout=None
    )
    assert resp.status == 200
    stream = SSEStream(resp)
    with capture_logs() as logs:
        await outage.stop_redis()
        monitor = client.app[RESOURCES].outages

        async def noticed() -> bool:
            await send(client, token, f"during-{time.monotonic()}")  # 503: Redis is away
            return monitor.is_down("redis")

        await eventually(noticed, timeout=10)
        await asyncio.sleep(1.6)  # let the outage last: the hub retries every 0.5 s
        await outage.start_redis()

        async def accepted() -> bool:
            status, _, _ = await send(client, token, f"after-{time.monotonic()}")
            return status == 201

        await eventually(accepted, timeout=20)
        frame = await stream.next(timeout=15)  # the message accepted after the outage
        assert frame is not None and frame.event == "message.accepted", frame
    lost = [e for e in logs if e["event"] == "event bus connection lost; resubscribing"]
    assert len(lost) <= 1, lost
    assert tracebacks(logs) == []
    resp.close()
