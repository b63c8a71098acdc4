"""A receipt we could not store is recovered by asking the provider (issue 10 item 4, DESIGN 11).

Twilio posts each status callback once; when we could not store it (our database was down,
the webhook answered 503) Twilio does not retry. The fake Twilio loses the scripted callbacks
on the way — the message or call still reaches that status at "Twilio", so a fetch
(GET …/Messages/{sid}.json, …/Calls/{sid}.json) tells what the callback would have — and the
worker's receipt reconciler must find the stuck message or call and apply what Twilio says
through the webhook's own path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.calls.conftest import Voice, call_settings, types
from tests.fakes.twilio_server import FakeTwilio
from tests.helpers import auth

PUBLIC = "https://gw.example.com"
SENDER = "+15005550006"
AGE = 0.4  # seconds without news before the reconciler asks


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
def settings(database_url, redis_url, fake: FakeTwilio):
    twilio = {
        "enabled": True,
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "api_base_url": fake.base_url,
        "timeout": 2,
    }
    return call_settings(
        database_url,
        redis_url,
        ami_port=None,
        http={"public_base_url": PUBLIC},
        providers={
            "sms": {"primary": "twilio", "default_from": SENDER},
            "voice": {"primary": "twilio", "default_from": SENDER},
            "twilio": twilio,
        },
        receipts={"interval": 0.1, "message_age": AGE, "call_age": AGE},
    )


@pytest.fixture
async def twilio(voice: Voice, fake: FakeTwilio, client) -> Voice:
    fake.route_callbacks(PUBLIC, str(client.make_url("")).rstrip("/"))
    return voice


def fetch_noops(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """No-op events written for what a fetch said (the callbacks' own duplicates aside)."""
    return [
        e
        for e in resource["timeline"]
        if e["type"].endswith(".status_noop") and e["data"].get("source") == "twilio:fetch"
    ]


async def send(voice: Voice, to: str) -> dict[str, Any]:
    resp = await voice.client.post(
        "/v1/messages",
        json={"to": to, "body": "Your code is 1234", "purpose": "transactional"},
        headers=auth(voice.token),
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def message(voice: Voice, message_id: str) -> dict[str, Any]:
    resp = await voice.client.get(f"/v1/messages/{message_id}", headers=auth(voice.token))
    assert resp.status == 200
    return await resp.json()


async def wait_message(voice: Voice, message_id: str, status: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while (got := await message(voice, message_id))["status"] != status:
        assert time.monotonic() < deadline, f"message stayed {got['status']}, wanted {status}"
        await asyncio.sleep(0.05)
    return got


async def test_a_message_whose_delivered_receipt_was_lost_ends_delivered(
    twilio: Voice, fake: FakeTwilio
) -> None:
    fake.script("+14155550123", lost_callbacks=frozenset({"delivered"}))
    sent = await send(twilio, "+14155550123")
    stuck = await wait_message(twilio, sent["id"], "sent")
    await fake.wait_callbacks()
    assert [cb.params["MessageStatus"] for cb in fake.callbacks if cb.lost] == ["delivered"]

    done = await wait_message(twilio, sent["id"], "delivered")
    sid = stuck["provider_message_id"]
    assert fake.requests_to(f"/Messages/{sid}.json"), "the reconciler asked Twilio"
    [delivered] = [e for e in done["timeline"] if e["type"] == "message.delivered"]
    assert delivered["data"]["source"] == "twilio:fetch"
    assert not fetch_noops(done)


async def test_a_message_with_no_news_is_asked_about_once_per_age_and_nothing_is_written(
    twilio: Voice, fake: FakeTwilio
) -> None:
    fake.script("+14155550124", statuses=["queued", "sent"])  # the carrier never reports
    sent = await send(twilio, "+14155550124")
    stuck = await wait_message(twilio, sent["id"], "sent")
    sid = stuck["provider_message_id"]
    started = time.monotonic()
    while len(fake.requests_to(f"/Messages/{sid}.json")) < 2:
        assert time.monotonic() - started < 10, "the reconciler never asked twice"
        await asyncio.sleep(0.05)
    await asyncio.sleep(AGE)
    asked = len(fake.requests_to(f"/Messages/{sid}.json"))
    assert asked <= (time.monotonic() - started) / AGE + 2, "asked more than once per age"
    after = await message(twilio, sent["id"])
    assert after["status"] == "sent"
    assert not fetch_noops(after), "an unchanged answer writes nothing"


async def test_a_call_whose_completed_callback_was_lost_ends_and_frees_its_channel(
    twilio: Voice, fake: FakeTwilio
) -> None:
    fake.script("+14155550130", lost_callbacks=frozenset({"completed"}))
    call_id = (await twilio.place(to="+14155550130"))["id"]
    answered = await twilio.wait(call_id, "answered")
    await fake.wait_callbacks()
    assert fake.calls[answered["provider_call_id"]]["status"] == "completed"
    assert (await twilio.get(call_id))["status"] == "answered", "the end was never stored"

    done = await twilio.wait(call_id, "completed")
    assert fake.requests_to(f"/Calls/{answered['provider_call_id']}.json")
    [completed] = [e for e in done["timeline"] if e["type"] == "call.completed"]
    assert completed["data"]["source"] == "twilio:fetch"
    assert "call.permit_released" in types(done)
    await twilio.wait_in_use("api", 0)


async def test_a_live_call_is_left_alone(twilio: Voice, fake: FakeTwilio) -> None:
    fake.script("+14155550131", call_outcome="in-progress")
    call_id = (await twilio.place(to="+14155550131"))["id"]
    answered = await twilio.wait(call_id, "answered")
    sid = answered["provider_call_id"]
    started = time.monotonic()
    while not fake.requests_to(f"/Calls/{sid}.json"):
        assert time.monotonic() - started < 10, "the reconciler never asked"
        await asyncio.sleep(0.05)
    still = await twilio.get(call_id)
    assert still["status"] == "answered"
    assert not fetch_noops(still)


class TestClaims:
    """Several workers: each stuck row is asked about once per age, whoever asks."""

    @pytest.fixture
    def settings(self, database_url, redis_url, fake: FakeTwilio):
        twilio = {
            "enabled": True,
            "account_sid": fake.account_sid,
            "auth_token": fake.auth_token,
            "api_base_url": fake.base_url,
        }
        return call_settings(
            database_url,
            redis_url,
            ami_port=None,
            http={"public_base_url": PUBLIC},
            providers={"sms": {"primary": "twilio", "default_from": SENDER}, "twilio": twilio},
            # The app's own reconciler runs once at start, then not for an hour.
            receipts={"interval": 3600, "message_age": AGE, "call_age": AGE},
        )

    async def test_concurrent_rounds_ask_about_each_stuck_message_once(
        self, twilio: Voice, fake: FakeTwilio
    ) -> None:
        from gateway.pipeline.receipts import ReceiptReconciler
        from gateway.pipeline.wiring import PROVIDERS
        from gateway.resources import RESOURCES

        for n in range(6):
            fake.script(f"+1415555015{n}", lost_callbacks=frozenset({"sent", "delivered"}))
        ids = [(await send(twilio, f"+1415555015{n}"))["id"] for n in range(6)]
        for message_id in ids:  # at Twilio: delivered; here: queued at the provider
            stuck = await wait_message(twilio, message_id, "queued")
            while not stuck["provider_message_id"]:
                stuck = await message(twilio, message_id)
        await fake.wait_callbacks()
        await asyncio.sleep(AGE + 0.1)

        app = twilio.client.app
        res = app[RESOURCES]
        workers = [
            ReceiptReconciler(res.db, app[PROVIDERS], twilio.runtime.service, res.settings.receipts)
            for _ in range(3)
        ]
        rounds = await asyncio.gather(*(w.run_once() for w in workers))
        assert sum(r.asked for r in rounds) == 6 and sum(r.moved for r in rounds) == 6
        assert len([r for r in fake.requests if "/Messages/SM" in r.path]) == 6
        for message_id in ids:
            assert (await message(twilio, message_id))["status"] == "delivered"
        again = await asyncio.gather(*(w.run_once() for w in workers))
        assert sum(r.asked for r in again) == 0, "delivered messages are not asked about"
