"""The real twilio SDK, through TwilioRestClient, against the local fake Twilio."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from gateway.providers.twilio import (
    IDEMPOTENCY_HEADER,
    TwilioConfig,
    TwilioPermanentError,
    TwilioRestClient,
    TwilioTransientError,
)
from gateway.providers.twilio.client import rebase_url
from tests.fakes.twilio_server import FakeTwilio

FROM = "+15005550006"
CALLBACK = "https://gw.example.com/webhooks/twilio/messages"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
async def twilio(fake: FakeTwilio) -> AsyncIterator[TwilioRestClient]:
    config = TwilioConfig(fake.account_sid, fake.auth_token, api_base_url=fake.base_url, timeout=2)
    async with TwilioRestClient(config) as client:
        yield client


async def test_send_message_posts_twilio_form_with_basic_auth(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    receipt = await twilio.send_message(
        "+15551230001", FROM, "hello", CALLBACK, idempotency_key="msg_1:attempt_1"
    )

    assert receipt.sid.startswith("SM") and len(receipt.sid) == 34
    assert (receipt.twilio_status, receipt.status) == ("queued", "queued")
    [req] = fake.requests
    assert (req.method, req.path) == (
        "POST",
        f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json",
    )
    assert dict(req.form) == {
        "To": "+15551230001",
        "From": FROM,
        "Body": "hello",
        "StatusCallback": CALLBACK,
    }
    assert req.auth == (fake.account_sid, fake.auth_token)
    expected = base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
    assert req.headers["Authorization"] == f"Basic {expected}"
    assert req.headers[IDEMPOTENCY_HEADER] == "msg_1:attempt_1"
    assert req.headers["User-Agent"].startswith("twilio-python/")
    assert fake.messages[receipt.sid]["body"] == "hello"


async def test_messaging_service_picks_the_sender(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    service = "MG" + "a" * 32
    receipt = await twilio.send_message(
        "+15551230001", None, "hi", None, messaging_service_sid=service
    )

    assert (receipt.twilio_status, receipt.status) == ("accepted", "queued")
    assert dict(fake.requests[0].form) == {
        "To": "+15551230001",
        "Body": "hi",
        "MessagingServiceSid": service,
    }
    assert IDEMPOTENCY_HEADER not in fake.requests[0].headers
    with pytest.raises(ValueError):
        await twilio.send_message("+15551230001", None, "hi", None)


async def test_5xx_is_transient_and_the_retry_succeeds(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    fake.script("+15551230002", fail_times=2, fail_status=500)

    for _ in range(2):
        with pytest.raises(TwilioTransientError) as err:
            await twilio.send_message("+15551230002", FROM, "x", None, idempotency_key="k")
        assert (err.value.status, err.value.code, err.value.ambiguous) == (500, 20500, True)
    receipt = await twilio.send_message("+15551230002", FROM, "x", None, idempotency_key="k")

    assert list(fake.messages) == [receipt.sid]
    assert [r.response_status for r in fake.requests] == [500, 500, 201]


async def test_429_is_transient_and_not_ambiguous(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    fake.script("+15551230003", fail_times=1, fail_status=429)

    with pytest.raises(TwilioTransientError) as err:
        await twilio.send_message("+15551230003", FROM, "x", None)

    assert (err.value.status, err.value.code, err.value.ambiguous) == (429, 20429, False)


async def test_invalid_to_is_permanent_with_twilio_code(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    fake.script("+15551230004", error_code=21211)

    with pytest.raises(TwilioPermanentError) as err:
        await twilio.send_message("+15551230004", FROM, "x", None)

    assert (err.value.status, err.value.code) == (400, 21211)
    assert "The 'To' number +15551230004 is not a valid phone number." in err.value.message
    assert err.value.more_info == "https://www.twilio.com/docs/errors/21211"
    assert fake.messages == {}
    # Twilio's test-credential magic numbers behave as on Twilio.
    with pytest.raises(TwilioPermanentError) as magic:
        await twilio.send_message("+15005550004", FROM, "x", None)
    assert magic.value.code == 21610


async def test_wrong_credentials_are_permanent(fake: FakeTwilio) -> None:
    config = TwilioConfig(fake.account_sid, "wrong-token", api_base_url=fake.base_url)
    async with TwilioRestClient(config) as client:
        with pytest.raises(TwilioPermanentError) as err:
            await client.send_message("+15551230005", FROM, "x", None)

    assert (err.value.status, err.value.code) == (401, 20003)


async def test_timeout_is_transient_and_a_retry_with_the_same_key_does_not_double_send(
    fake: FakeTwilio,
) -> None:
    # Twilio accepts the message but the reply is slower than our timeout.
    fake.script("+15551230006", delays=[1.0])
    config = TwilioConfig(
        fake.account_sid, fake.auth_token, api_base_url=fake.base_url, timeout=0.2
    )
    async with TwilioRestClient(config) as client:
        with pytest.raises(TwilioTransientError) as err:
            await client.send_message("+15551230006", FROM, "x", CALLBACK, idempotency_key="m1:a1")
        assert err.value.ambiguous
        receipt = await client.send_message(
            "+15551230006", FROM, "x", CALLBACK, idempotency_key="m1:a1"
        )

    assert list(fake.messages) == [receipt.sid]
    assert [r.idempotency_token for r in fake.requests] == ["m1:a1", "m1:a1"]


async def test_same_token_one_message_different_tokens_two(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    first = await twilio.send_message("+15551230007", FROM, "x", None, idempotency_key="a")
    again = await twilio.send_message("+15551230007", FROM, "x", None, idempotency_key="a")
    other = await twilio.send_message("+15551230007", FROM, "x", None, idempotency_key="b")

    assert first.sid == again.sid != other.sid
    assert len(fake.messages) == 2


async def test_concurrent_sends_each_carry_their_own_token(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    numbers = [f"+1555123{i:04d}" for i in range(10)]
    await asyncio.gather(
        *(twilio.send_message(n, FROM, "x", None, idempotency_key=f"key-{n}") for n in numbers)
    )

    assert {r.form["To"]: r.idempotency_token for r in fake.requests} == {
        n: f"key-{n}" for n in numbers
    }


async def test_connection_refused_is_transient_and_unambiguous() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = TwilioConfig("AC" + "0" * 32, "t", api_base_url=f"http://127.0.0.1:{port}")
    async with TwilioRestClient(config) as client:
        with pytest.raises(TwilioTransientError) as err:
            await client.send_message("+15551230008", FROM, "x", None)

    assert err.value.ambiguous is False


async def test_every_sdk_call_goes_to_the_base_url(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    receipt = await twilio.send_message("+15551230009", FROM, "x", None)

    fetched = await twilio.sdk.messages(receipt.sid).fetch_async()  # not wrapped, still routed

    assert fetched.sid == receipt.sid
    assert fake.requests[-1].method == "GET"


def test_rebase_url_swaps_scheme_and_host_and_keeps_path_and_query() -> None:
    base = urlsplit("http://127.0.0.1:8099/twilio")
    url = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?PageSize=50"

    assert rebase_url(url, base) == (
        "http://127.0.0.1:8099/twilio/2010-04-01/Accounts/AC1/Messages.json?PageSize=50"
    )
    assert rebase_url("https://messaging.twilio.com/v1/Services", urlsplit("http://h:1")) == (
        "http://h:1/v1/Services"
    )


def test_config_rejects_unusable_values() -> None:
    with pytest.raises(ValueError):
        TwilioConfig("AC1", "t", api_base_url="api.twilio.com")
    with pytest.raises(ValueError):
        TwilioConfig("AC1", "t", timeout=0)
    assert "t0ken" not in repr(TwilioConfig("AC1", "t0ken"))


async def test_client_must_be_started() -> None:
    client = TwilioRestClient(TwilioConfig("AC1", "t"))
    with pytest.raises(RuntimeError):
        await client.send_message("+15551230010", FROM, "x", None)
    await client.close()  # closing a never-started client is harmless


async def test_create_call_sends_twiml_events_and_amd(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    receipt = await twilio.create_call(
        "+15551230011",
        FROM,
        twiml="<Response><Say>hi</Say></Response>",
        status_callback="https://gw.example.com/webhooks/twilio/calls",
        status_callback_events=["ringing", "answered", "completed"],
        ring_timeout=25,
        machine_detection="Enable",
        idempotency_key="call_1:attempt_1",
    )

    assert receipt.sid.startswith("CA") and len(receipt.sid) == 34
    assert (receipt.twilio_status, receipt.status) == ("queued", "queued")
    [req] = fake.requests
    assert req.path == f"/2010-04-01/Accounts/{fake.account_sid}/Calls.json"
    assert req.form["Twiml"] == "<Response><Say>hi</Say></Response>"
    assert req.form.getall("StatusCallbackEvent") == ["ringing", "answered", "completed"]
    assert (req.form["Timeout"], req.form["MachineDetection"]) == ("25", "Enable")
    assert "Url" not in req.form
    assert req.idempotency_token == "call_1:attempt_1"
    with pytest.raises(ValueError):
        await twilio.create_call("+15551230011", FROM, status_callback=None)
    with pytest.raises(ValueError):
        await twilio.create_call("+15551230011", FROM, twiml="<Response/>", url="https://x/y")


async def test_hangup_ends_a_live_call_and_is_idempotent(
    fake: FakeTwilio, twilio: TwilioRestClient
) -> None:
    fake.script("+15551230012", call_outcome="in-progress")
    call = await twilio.create_call("+15551230012", FROM, url="https://gw.example.com/twiml/1")
    await fake.wait_callbacks()
    assert fake.calls[call.sid]["status"] == "in-progress"

    ended = await twilio.hangup_call(call.sid)
    again = await twilio.hangup_call(call.sid)

    assert ended is not None and (ended.sid, ended.status) == (call.sid, "completed")
    assert again is None  # already over: a retried hangup is not an error
    hangups = fake.requests_to(f"/Calls/{call.sid}.json")
    assert [dict(r.form) for r in hangups] == [{"Status": "completed"}] * 2
    assert [r.response_status for r in hangups] == [200, 400]


async def test_hangup_of_unknown_call_is_permanent(twilio: TwilioRestClient) -> None:
    with pytest.raises(TwilioPermanentError) as err:
        await twilio.hangup_call("CA" + "f" * 32)

    assert (err.value.status, err.value.code) == (404, 20404)
