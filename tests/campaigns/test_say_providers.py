"""say_then_hangup, the campaign's abandon message and voicemail drop, on each voice provider:
Twilio gets the call's TwiML replaced by <Say> then <Hangup/> (the real SDK against the fake
Twilio); a provider that cannot play says so (say_unsupported), and the caller hangs up."""

from __future__ import annotations

import pytest

from gateway.providers.contracts import CallRef, PermanentProviderError, VoiceProvider
from gateway.providers.twilio import TwilioConfig, TwilioRestClient
from gateway.providers.twilio.voice import TwilioVoice
from tests.fakes.twilio_server import FakeTwilio

FROM = "+15005550006"


async def test_twilio_says_the_message_then_hangs_up():
    async with FakeTwilio() as fake:
        config = TwilioConfig(
            fake.account_sid, fake.auth_token, api_base_url=fake.base_url, timeout=2
        )
        fake.script("+14155550141", callbacks=False)
        async with TwilioRestClient(config) as client:
            receipt = await client.create_call("+14155550141", FROM, twiml="<Response/>")
        voice = TwilioVoice(config, public_base_url=None, default_from=FROM)
        await voice.start()
        try:
            text = "Acme <Insurance> & co: to opt out, press 9."
            await voice.say_then_hangup(CallRef("twilio", "tl-key-1", receipt.sid), text)
        finally:
            await voice.close()
        (update,) = [
            r for r in fake.requests_to(f"/Calls/{receipt.sid}.json") if r.method == "POST"
        ]
        assert update.form["Twiml"] == (
            "<Response><Say>Acme &lt;Insurance&gt; &amp; co: to opt out, press 9.</Say>"
            "<Hangup/></Response>"
        )


async def test_a_provider_that_cannot_play_says_so():
    class Mute(VoiceProvider):
        name = "mute"

        async def _originate(self, action, attempt_key, spec):  # pragma: no cover
            raise NotImplementedError

        async def _hangup(self, call):  # pragma: no cover
            raise NotImplementedError

        async def _bridge(self, call, target):  # pragma: no cover
            raise NotImplementedError

    with pytest.raises(PermanentProviderError) as err:
        await Mute().say_then_hangup(CallRef("mute", "k", "id"), "hello")
    assert err.value.code == "say_unsupported"


async def test_twilio_lookup_flags_what_lookup_says():
    from gateway.providers.twilio.lookup import TwilioLookup

    async with FakeTwilio() as fake:
        config = TwilioConfig(
            fake.account_sid, fake.auth_token, api_base_url=fake.base_url, timeout=2
        )
        lookup = TwilioLookup(config)
        try:
            risky = await lookup.lookup("+14155550119")
            clean = await lookup.lookup("+14155550111")
            blocked = await lookup.lookup("+14155550118")
        finally:
            await lookup.close()
        assert (risky.flags, risky.score, risky.line_type) == (("high_risk",), 0.9, "nonFixedVoip")
        assert (clean.flags, clean.score) == ((), 0.05)
        assert blocked.flags == ("blocked",)
        (req,) = [r for r in fake.requests_to("/v2/PhoneNumbers/+14155550119")]
        assert req.query["Fields"] == "line_type_intelligence,sms_pumping_risk"
