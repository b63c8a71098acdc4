"""The same call API on the other voice providers: the sandbox (no account, deterministic
numbers) and Twilio (the real SDK against the local fake, signed status callbacks mapped into
the same call states). And principle 2: no voice adapter originates without a clearance."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.actions import OutboundAction
from gateway.pipeline.wiring import CHAIN
from gateway.providers.contracts import CallSpec
from gateway.providers.sandbox import voice as sandbox
from guardrails.cleared import ForgedClearance
from tests.calls.conftest import Voice, call_settings, types
from tests.fakes.twilio_server import FakeTwilio

PUBLIC = "https://gw.example.com"
# 03:00 in Los Angeles tomorrow: the next opening is still ahead of the real clock, so the
# deferred call's job does not come due during the test.
NIGHT = (datetime.now(UTC) + timedelta(days=1)).replace(hour=11, minute=0, second=0)


class TestSandbox:
    @pytest.fixture
    def settings(self, database_url, redis_url):
        return call_settings(
            database_url,
            redis_url,
            ami_port=None,
            calls={"max_attempts": 1},
            pools={"sizes": {"api": 16}},
        )

    async def test_sandbox_numbers_end_in_the_right_state(self, voice: Voice):
        cases = {
            sandbox.ANSWERS: ("completed", None),
            sandbox.BUSY: ("busy", "user_busy"),
            sandbox.NO_ANSWER: ("no_answer", "no_answer"),
            sandbox.CARRIER_FAILS: ("failed", "congestion"),
            sandbox.NOT_FOUND: ("failed", "not_found"),
            sandbox.DECLINES: ("no_answer", "declined"),
            sandbox.UNREACHABLE: ("failed", "retries_exhausted"),
        }
        ids = {to: (await voice.place(to=to))["id"] for to in cases}
        machine = (await voice.place(to=sandbox.MACHINE, amd=True, on_machine="hangup"))["id"]
        up = (await voice.place(to=sandbox.STAYS_UP))["id"]
        for to, (status, code) in cases.items():
            done = await voice.wait(ids[to], status)
            assert done["error_code"] == code, to
        done = await voice.wait(machine, "completed")
        assert done["amd_result"] == "machine"
        assert "call.hangup_requested" in types(done)
        await voice.wait(up, "answered")
        await voice.post(f"/v1/calls/{up}/hangup")
        assert (await voice.wait(up, "completed"))["hangup_cause"] == 16
        await voice.wait_in_use("api", 0)

    async def test_a_sandbox_call_is_hung_up_at_its_max_duration(self, voice: Voice):
        call_id = (await voice.place(to=sandbox.STAYS_UP, max_duration=1))["id"]
        done = await voice.wait(call_id, "completed")
        assert (done["error_code"], done["hangup_cause"]) == ("max_duration", 16)
        assert done["durations"]["talk_seconds"] >= 1.0
        requested = next(e for e in done["timeline"] if e["type"] == "call.hangup_requested")
        assert requested["data"] == {"reason": "max_duration"}
        await voice.wait_in_use("api", 0)

    async def test_sandbox_agent_bridge_and_two_call_bridge(self, voice: Voice):
        agent = (await voice.place(to=sandbox.STAYS_UP, on_answer={"agent": {"voice": "x"}}))["id"]
        call = await voice.wait_event(agent, "call.bridged")
        assert call["agent"]["sip_uri"].startswith("sip:agent-")
        a = (await voice.place(to=sandbox.STAYS_UP))["id"]
        b = (await voice.place(to=sandbox.STAYS_UP))["id"]
        await voice.wait(a, "answered")
        await voice.wait(b, "answered")
        await voice.post(f"/v1/calls/{a}/bridge", call_id=b)
        await voice.wait_event(b, "call.bridged")
        await voice.post(f"/v1/calls/{b}/hangup")
        await voice.wait(a, "completed")  # the bridged peer goes too
        await voice.post(f"/v1/calls/{agent}/hangup")
        await voice.wait(agent, "completed")

    async def test_calling_hours_defer_or_refuse_and_a_deferred_call_can_be_canceled(
        self, voice: Voice, client
    ):
        client.app[CHAIN].clock = lambda: NIGHT  # 03:00 in California
        deferred = await voice.place(to=sandbox.ANSWERS, purpose="marketing")
        assert deferred["status"] == "scheduled" and deferred["send_at"]
        refused = await voice.place(
            to=sandbox.ANSWERS, purpose="marketing", when_closed="deny", expect=422
        )
        assert refused["code"] == "outside_calling_hours"
        rejected = await voice.get(refused["call_id"])
        assert rejected["status"] == "rejected" and "guardrail.deny" in types(rejected)
        assert await voice.in_use("api") == 0, "no channel is held for a call that waits"
        canceled = await voice.post(f"/v1/calls/{deferred['id']}/hangup")
        assert canceled["status"] == "canceled"

    async def test_adapters_refuse_anything_but_a_genuine_clearance(self, voice: Voice, client):
        action = OutboundAction(
            tenant_id=uuid.uuid4(),
            subject=str(uuid.uuid4()),
            channel="voice",
            to=sandbox.ANSWERS,
            from_=None,
            purpose="transactional",
            trace_id="t" * 32,
        )
        decision = await client.app[CHAIN].evaluate(action, stage="dispatch")
        assert decision.cleared is not None
        forged = dataclasses.replace(
            decision.cleared, action=dataclasses.replace(action, to=sandbox.BUSY)
        )
        spec = CallSpec(call_id=action.subject, trace_id=action.trace_id)
        for provider in voice.runtime.registry.voice_providers():
            with pytest.raises(ForgedClearance):
                await provider.originate(forged, "tl-forged-1", spec)
            with pytest.raises(ForgedClearance):
                await provider.originate(object(), "tl-forged-2", spec)  # type: ignore[arg-type]


class TestTwilio:
    @pytest.fixture
    async def fake(self) -> AsyncIterator[FakeTwilio]:
        async with FakeTwilio() as fake:
            yield fake

    @pytest.fixture
    def settings(self, database_url, redis_url, fake: FakeTwilio):
        return call_settings(
            database_url,
            redis_url,
            ami_port=None,
            http={"public_base_url": PUBLIC},
            providers={
                "voice": {"primary": "twilio", "default_from": "+15005550006"},
                "twilio": {
                    "enabled": True,
                    "account_sid": fake.account_sid,
                    "auth_token": fake.auth_token,
                    "api_base_url": fake.base_url,
                },
            },
        )

    @pytest.fixture
    async def twilio_voice(self, voice: Voice, fake: FakeTwilio, client) -> Voice:
        fake.route_callbacks(PUBLIC, str(client.make_url("")).rstrip("/"))
        return voice

    async def test_answer_bridge_to_agent_and_hangup_via_signed_callbacks(
        self, twilio_voice: Voice, fake: FakeTwilio
    ):
        voice = twilio_voice
        fake.script("+14155550100", call_outcome="in-progress")
        placed = await voice.place(
            amd=True, on_answer={"bridge_to": "sip:agent@ultravox"}, max_duration=600
        )
        call_id = placed["id"]
        call = await voice.wait_event(call_id, "call.bridged")
        [create] = fake.requests_to("/Calls.json")
        key = f"tl-{call_id}-1"
        assert create.idempotency_token == key
        assert create.form["From"] == "+15005550006" and create.form["MachineDetection"]
        assert f"key={key}" in create.form["StatusCallback"]
        assert create.form["TimeLimit"] == "600"  # Twilio enforces the cap too
        assert call["provider"] == "twilio" and call["provider_call_id"].startswith("CA")
        assert call["amd_result"] == "human"
        [update] = [r for r in fake.requests if "/Calls/CA" in r.path and "Twiml" in r.form]
        assert "<Dial><Sip>sip:agent@ultravox</Sip></Dial>" in update.form["Twiml"]
        assert "<Pause" in create.form["Twiml"]  # held, answered, until the bridge

        await voice.post(f"/v1/calls/{call_id}/hangup")
        done = await voice.wait(call_id, "completed")
        await voice.wait_in_use("api", 0)
        seen = types(done)
        for kind in ("call.dialing", "call.ringing", "call.answered", "call.completed"):
            assert kind in seen
        assert all(cb.status == 200 for cb in fake.callbacks), [cb.status for cb in fake.callbacks]

    async def test_busy_and_duplicate_reordered_callbacks(self, twilio_voice: Voice, fake):
        voice = twilio_voice
        fake.script("+14155550101", call_outcome="busy")
        fake.script(
            "+14155550102", statuses=["initiated", "in-progress", "ringing", "completed", "ringing"]
        )
        busy = (await voice.place(to="+14155550101"))["id"]
        messy = (await voice.place(to="+14155550102"))["id"]
        assert (await voice.wait(busy, "busy"))["error_code"] == "user_busy"
        done = await voice.wait(messy, "completed")
        await fake.wait_callbacks()
        done = await voice.get(messy)
        assert done["status"] == "completed"
        noops = [e for e in done["timeline"] if e["type"] == "call.status_noop"]
        assert {e["data"]["reported"] for e in noops} == {"ringing"}

        forged = await voice.client.post(
            f"/webhooks/twilio/voice/status?key=tl-{messy}-1",
            data={"CallSid": done["provider_call_id"], "CallStatus": "busy"},
            headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"},
        )
        assert forged.status == 403
        assert (await voice.get(messy))["status"] == "completed"
