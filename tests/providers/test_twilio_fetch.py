"""fetch_status through the Twilio adapters: the real SDK's GET of a Message or Call resource
against the fake Twilio, normalized into the same reports a callback gives."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.providers.contracts import CallRef, PermanentProviderError, TransientProviderError
from gateway.providers.twilio import TwilioConfig, TwilioRestClient
from gateway.providers.twilio.adapter import TwilioMessaging
from gateway.providers.twilio.voice import TwilioVoice
from tests.fakes.twilio_server import FakeTwilio

FROM = "+15005550006"
CALLBACK = "https://gw.example.com/webhooks/twilio/status"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


def config(fake: FakeTwilio) -> TwilioConfig:
    return TwilioConfig(fake.account_sid, fake.auth_token, api_base_url=fake.base_url, timeout=2)


@pytest.fixture
async def messaging(fake: FakeTwilio) -> AsyncIterator[TwilioMessaging]:
    adapter = TwilioMessaging(config(fake), public_base_url=None, messaging_service_sid=None)
    await adapter.start()
    yield adapter
    await adapter.close()


@pytest.fixture
async def voice(fake: FakeTwilio) -> AsyncIterator[TwilioVoice]:
    adapter = TwilioVoice(config(fake), public_base_url=None, default_from=FROM)
    await adapter.start()
    yield adapter
    await adapter.close()


async def test_a_fetched_message_reports_what_twilio_last_knew(
    fake: FakeTwilio, messaging: TwilioMessaging
) -> None:
    fake.script(
        "+14155550140",
        statuses=["queued", "sent", "undelivered"],
        lost_callbacks=frozenset({"queued", "sent", "undelivered"}),
    )
    async with TwilioRestClient(config(fake)) as client:
        receipt = await client.send_message("+14155550140", FROM, "hi", CALLBACK)
    await fake.wait_callbacks()
    report = await messaging.fetch_status(receipt.sid)
    assert report is not None
    assert (report.provider, report.provider_message_id) == ("twilio", receipt.sid)
    assert (report.status, report.error_code, report.source) == (
        "undelivered",
        "30003",
        "twilio:fetch",
    )
    assert messaging.fetches_status


async def test_an_unknown_message_is_a_permanent_error_and_a_5xx_transient(
    fake: FakeTwilio, messaging: TwilioMessaging
) -> None:
    with pytest.raises(PermanentProviderError):
        await messaging.fetch_status("SM" + "0" * 32)
    await fake.close()  # nobody answers any more
    with pytest.raises(TransientProviderError):
        await messaging.fetch_status("SM" + "0" * 32)


async def test_a_fetched_call_reads_as_its_callback_would(
    fake: FakeTwilio, voice: TwilioVoice
) -> None:
    fake.script("+14155550141", call_outcome="busy", callbacks=False)
    async with TwilioRestClient(config(fake)) as client:
        receipt = await client.create_call("+14155550141", FROM, twiml="<Response/>")
    await fake.wait_callbacks()
    ref = CallRef("twilio", "tl-key-1", receipt.sid)
    report = await voice.fetch_status(ref)
    assert report is not None
    assert (report.attempt_key, report.status, report.error_code) == (
        "tl-key-1",
        "busy",
        "user_busy",
    )
    assert report.source == "twilio:fetch" and report.provider_call_id == receipt.sid
    assert await voice.fetch_status(CallRef("twilio", "tl-key-2")) is None, "no CallSid yet"
