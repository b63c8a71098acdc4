"""Status callbacks from the fake Twilio, verified by our signature module behind a "proxy".

Callbacks are signed for the public URL (https://gw.example.com/...) and delivered to a
local receiver on port 0, exactly as Twilio → reverse proxy → daemon.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping
from twilio.request_validator import HMAC_SHA256, RequestValidator

from gateway.providers.twilio import (
    InvalidTwilioSignature,
    TwilioConfig,
    TwilioRestClient,
    is_valid_signature,
    normalize_call_status,
    normalize_message_status,
    public_url,
    verify_request,
)
from tests.fakes.twilio_server import FakeTwilio

PUBLIC = "https://gw.example.com"
FROM = "+15005550006"


@dataclass
class Received:
    raw_path: str
    form: MultiMapping[str]
    signature: str | None
    verified: bool


class Receiver:
    """The daemon's side: a webhook endpoint that verifies against the public base URL."""

    def __init__(self, auth_token: str) -> None:
        self.auth_token = auth_token
        self.got: list[Received] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks/twilio/{kind}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        signature = request.headers.get("X-Twilio-Signature")
        try:
            form = await verify_request(request, auth_token=self.auth_token, public_base_url=PUBLIC)
        except InvalidTwilioSignature:
            posted = await request.post()
            form = MultiDictProxy(
                MultiDict((k, v) for k, v in posted.items() if isinstance(v, str))
            )
            self.got.append(Received(request.raw_path, form, signature, False))
            return web.Response(status=403)
        self.got.append(Received(request.raw_path, form, signature, True))
        return web.Response(status=204)

    def statuses(self, field: str) -> list[str]:
        return [r.form[field] for r in self.got]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as server:
        yield server


@pytest.fixture
async def receiver(fake: FakeTwilio) -> AsyncIterator[Receiver]:
    rx = Receiver(fake.auth_token)
    await rx.start()
    fake.route_callbacks(PUBLIC, rx.url)
    yield rx
    await rx.close()


@pytest.fixture
async def twilio(fake: FakeTwilio) -> AsyncIterator[TwilioRestClient]:
    config = TwilioConfig(fake.account_sid, fake.auth_token, api_base_url=fake.base_url, timeout=2)
    async with TwilioRestClient(config) as client:
        yield client


async def test_status_callbacks_arrive_signed_for_the_public_url_and_verify(
    fake: FakeTwilio, receiver: Receiver, twilio: TwilioRestClient
) -> None:
    callback = f"{PUBLIC}/webhooks/twilio/messages?trace=tr_123&a=%2F"
    receipt = await twilio.send_message("+15551239001", FROM, "hi", callback)
    await fake.wait_callbacks()

    assert [c.status for c in fake.callbacks] == [204, 204, 204]
    assert all(r.verified for r in receiver.got)
    assert receiver.statuses("MessageStatus") == ["queued", "sent", "delivered"]
    assert [normalize_message_status(s) for s in receiver.statuses("MessageStatus")] == [
        "queued",
        "sent",
        "delivered",
    ]
    first = receiver.got[0]
    assert first.raw_path == "/webhooks/twilio/messages?trace=tr_123&a=%2F"
    assert first.form["MessageSid"] == receipt.sid
    assert first.form["AccountSid"] == fake.account_sid
    assert (first.form["To"], first.form["From"]) == ("+15551239001", FROM)


async def test_signature_only_holds_for_the_exact_public_url(
    fake: FakeTwilio, receiver: Receiver, twilio: TwilioRestClient
) -> None:
    await twilio.send_message("+15551239002", FROM, "hi", f"{PUBLIC}/webhooks/twilio/messages?t=1")
    await fake.wait_callbacks()
    got = receiver.got[0]

    def valid(base: str, path: str = got.raw_path) -> bool:
        url = public_url(base, path)
        return is_valid_signature(
            auth_token=fake.auth_token, url=url, params=got.form, signature=got.signature
        )

    assert valid(PUBLIC)
    assert valid(PUBLIC + "/")  # a trailing slash in settings must not matter
    assert not valid(receiver.url)  # the request's own host: what a naive check would use
    assert not valid("https://other.example.com")
    assert not valid("http://gw.example.com")
    assert not valid(PUBLIC, "/webhooks/twilio/messages")  # query string dropped
    assert not is_valid_signature(
        auth_token="another-token",
        url=public_url(PUBLIC, got.raw_path),
        params=got.form,
        signature=got.signature,
    )


async def test_forged_altered_or_missing_signature_is_rejected(
    fake: FakeTwilio, receiver: Receiver, twilio: TwilioRestClient
) -> None:
    await twilio.send_message("+15551239003", FROM, "hi", f"{PUBLIC}/webhooks/twilio/messages")
    await fake.wait_callbacks()
    genuine = fake.callbacks[-1]
    forged = base64.b64encode(hmac.new(b"guess", b"x", hashlib.sha1).digest()).decode()
    altered = {**genuine.params, "MessageStatus": "failed"}

    async with aiohttp.ClientSession() as http:
        attempts = [
            (genuine.params, {"X-Twilio-Signature": forged}),
            (altered, {"X-Twilio-Signature": genuine.headers["X-Twilio-Signature"]}),
            (genuine.params, {}),
        ]
        statuses = []
        for params, headers in attempts:
            async with http.post(genuine.delivered_to, data=params, headers=headers) as resp:
                statuses.append(resp.status)
        # Replaying the genuine request verbatim verifies (dedup is the status machine's job).
        async with http.post(
            genuine.delivered_to, data=genuine.params, headers=genuine.headers
        ) as r:
            statuses.append(r.status)

    assert statuses == [403, 403, 403, 204]


async def test_scripted_out_of_order_duplicate_and_failed_callbacks(
    fake: FakeTwilio, receiver: Receiver, twilio: TwilioRestClient
) -> None:
    fake.script("+15551239004", statuses=["sent", "undelivered", "queued", "undelivered"])
    fake.script("+15551239005", callbacks=False)
    fake.script("+15551239006", statuses=["failed"], callback_error_code=30007)
    url = f"{PUBLIC}/webhooks/twilio/messages"

    await twilio.send_message("+15551239004", FROM, "a", url)
    await fake.wait_callbacks()
    await twilio.send_message("+15551239005", FROM, "b", url)
    await twilio.send_message("+15551239006", FROM, "c", url)
    await fake.wait_callbacks()

    assert all(r.verified for r in receiver.got)
    assert [
        (r.form["To"], r.form["MessageStatus"], r.form.get("ErrorCode")) for r in receiver.got
    ] == [
        ("+15551239004", "sent", None),
        ("+15551239004", "undelivered", "30003"),
        ("+15551239004", "queued", None),
        ("+15551239004", "undelivered", "30003"),
        ("+15551239006", "failed", "30007"),
    ]


async def test_call_callbacks_only_for_requested_events(
    fake: FakeTwilio, receiver: Receiver, twilio: TwilioRestClient
) -> None:
    fake.script("+15551239007", call_outcome="no-answer")
    url = f"{PUBLIC}/webhooks/twilio/calls"

    answered = await twilio.create_call(
        "+15551239008",
        FROM,
        twiml="<Response/>",
        status_callback=url,
        status_callback_events=["answered", "completed"],
        machine_detection="Enable",
    )
    await fake.wait_callbacks()
    unanswered = await twilio.create_call(
        "+15551239007", FROM, twiml="<Response/>", status_callback=url
    )
    await fake.wait_callbacks()

    assert all(r.verified for r in receiver.got)
    seen = [
        (r.form["CallSid"], r.form["CallStatus"], r.form["SequenceNumber"]) for r in receiver.got
    ]
    assert seen == [
        (answered.sid, "in-progress", "0"),
        (answered.sid, "completed", "1"),
        (unanswered.sid, "initiated", "0"),
        (unanswered.sid, "ringing", "1"),
        (unanswered.sid, "no-answer", "2"),
    ]
    assert receiver.got[0].form["AnsweredBy"] == "human"
    assert [normalize_call_status(s[1]) for s in seen] == [
        "answered",
        "completed",
        "dialing",
        "ringing",
        "no_answer",
    ]


async def test_hangup_sends_the_final_callback(
    fake: FakeTwilio, receiver: Receiver, twilio: TwilioRestClient
) -> None:
    fake.script("+15551239009", call_outcome="in-progress")
    url = f"{PUBLIC}/webhooks/twilio/calls"
    call = await twilio.create_call(
        "+15551239009", FROM, url=f"{PUBLIC}/twiml", status_callback=url
    )
    await fake.wait_callbacks()

    await twilio.hangup_call(call.sid)
    await fake.wait_callbacks()

    assert receiver.statuses("CallStatus") == ["initiated", "ringing", "in-progress", "completed"]


def test_json_body_is_covered_by_body_sha256() -> None:
    token = "tok"
    body = '{"event":"x"}'
    digest = hashlib.sha256(body.encode()).hexdigest()
    url = f"{PUBLIC}/webhooks/twilio/events?bodySHA256={digest}"
    signature = RequestValidator(token).compute_signature(url, {})

    assert is_valid_signature(auth_token=token, url=url, params=body, signature=signature)
    assert not is_valid_signature(auth_token=token, url=url, params=body + " ", signature=signature)
    bare = f"{PUBLIC}/webhooks/twilio/events"  # a raw body without bodySHA256 is not signed
    bare_signature = RequestValidator(token).compute_signature(bare, {})
    assert not is_valid_signature(auth_token=token, url=bare, params=body, signature=bare_signature)


def test_signature_settings_header_selects_hmac_sha256() -> None:
    token, url, params = "secret", f"{PUBLIC}/webhooks/twilio/messages", {"MessageStatus": "sent"}
    signature = RequestValidator(token).compute_signature(url, params, algorithm=HMAC_SHA256)
    settings = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"

    assert is_valid_signature(
        auth_token=token, url=url, params=params, signature=signature, signature_settings=settings
    )
    assert not is_valid_signature(auth_token=token, url=url, params=params, signature=signature)
    assert not is_valid_signature(auth_token=token, url=url, params=params, signature="")


@pytest.mark.parametrize(
    ("twilio_status", "expected"),
    [
        ("accepted", "queued"),
        ("scheduled", "queued"),
        ("queued", "queued"),
        ("sending", "queued"),
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("read", "delivered"),
        ("partially_delivered", "delivered"),
        ("undelivered", "undelivered"),
        ("failed", "failed"),
        ("canceled", "failed"),
        ("receiving", "received"),
        ("received", "received"),
        ("Delivered", "delivered"),
        ("teleported", None),
    ],
)
def test_normalize_message_status(twilio_status: str, expected: str | None) -> None:
    assert normalize_message_status(twilio_status) == expected


@pytest.mark.parametrize(
    ("twilio_status", "expected"),
    [
        ("queued", "queued"),
        ("initiated", "dialing"),
        ("ringing", "ringing"),
        ("in-progress", "answered"),
        ("completed", "completed"),
        ("busy", "busy"),
        ("no-answer", "no_answer"),
        ("failed", "failed"),
        ("canceled", "canceled"),
        ("on-hold", None),
    ],
)
def test_normalize_call_status(twilio_status: str, expected: str | None) -> None:
    assert normalize_call_status(twilio_status) == expected
