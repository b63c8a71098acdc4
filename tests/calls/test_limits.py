"""Limits on a live call, over the test AMI server: the maximum call duration (a hangup through
the same control path POST …/hangup takes, surviving a worker restart) and the AMD timeout (no
verdict in time: the call goes on as "unknown" instead of waiting for ever)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from gateway.app import create_app
from tests.amisim import scenarios as sc
from tests.calls.conftest import Voice, types
from tests.calls.test_asterisk_calls import ordered

AGENT = {"bridge_to": "sip:agent@ultravox"}


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class TestMaxDuration:
    @pytest.fixture
    def overrides(self):
        return {"calls": {"max_duration": 2}}

    async def test_an_answered_call_is_hung_up_at_its_max_duration(self, voice, ami):
        placed = await voice.place(max_duration=1)
        capped = await voice.place(to="+14155550171", max_duration=3600)
        default = await voice.place(to="+14155550172")
        assert placed["max_duration"] == 1
        assert capped["max_duration"] == 2, "a call may ask for less than calls.max_duration"
        assert default["max_duration"] == 2
        refused = await voice.place(max_duration=0, expect=422)
        assert refused["code"] == "validation_error" and "max_duration" in refused["detail"]

        done = await voice.wait(placed["id"], "completed")
        talk = seconds_between(done["answered_at"], done["ended_at"])
        assert 1.0 <= talk < 3.0, talk  # the deadline, plus a Hangup round trip
        assert done["error_code"] == "max_duration"
        assert done["error_detail"] == "hung up after its maximum duration of 1 s"
        assert done["hangup_cause"] == 16, "ended by our Hangup action, as an API hangup is"
        [hangup] = [
            a for a in ami.actions("Hangup") if a.get("Channel") == done["provider_call_id"]
        ]
        assert hangup is not None
        seen = types(done)
        assert ordered(
            seen,
            [
                "call.answered",
                "call.max_duration",
                "call.hangup_requested",
                "call.completed",
                "call.permit_released",
            ],
        ), seen
        reached = next(e for e in done["timeline"] if e["type"] == "call.max_duration")
        assert reached["data"]["max_duration"] == 1
        requested = next(e for e in done["timeline"] if e["type"] == "call.hangup_requested")
        assert requested["data"] == {"reason": "max_duration"}

        for call_id in (capped["id"], default["id"]):
            ended = await voice.wait(call_id, "completed")
            assert ended["error_code"] == "max_duration"
            assert seconds_between(ended["answered_at"], ended["ended_at"]) >= 2.0
            reached = next(e for e in ended["timeline"] if e["type"] == "call.max_duration")
            assert reached["data"]["max_duration"] == 2
        await voice.wait_in_use("api", 0)

    async def test_a_call_that_ends_first_is_left_alone(self, voice, ami):
        call_id = (await voice.place(max_duration=1))["id"]
        await voice.wait(call_id, "answered")
        await voice.post(f"/v1/calls/{call_id}/hangup")
        done = await voice.wait(call_id, "completed")
        await asyncio.sleep(1.2)  # past the deadline: its job runs and finds nothing to do
        after = await voice.get(call_id)
        assert after["error_code"] is None and "call.max_duration" not in types(after)
        assert len(ami.actions("Hangup")) == 1
        assert [e["id"] for e in after["timeline"]] == [e["id"] for e in done["timeline"]]

    async def test_the_deadline_survives_a_worker_restart(
        self, voice, ami, client, aiohttp_client, settings
    ):
        call_id = (await voice.place(max_duration=1))["id"]
        await voice.wait(call_id, "answered")
        # The only worker stops before the deadline: no timer in its memory can help.
        await client.close()
        await asyncio.sleep(1.2)
        assert ami.find_channel(f"tl-{call_id}-1").alive, "still up on Asterisk"
        assert not ami.actions("Hangup")

        app = await aiohttp_client(create_app(settings))
        try:  # closed here: the fixtures drop the database and the AMI server before its own
            restarted = Voice(app, voice.token)
            await restarted.wait_connected()
            done = await restarted.wait(call_id, "completed")
            assert done["error_code"] == "max_duration" and done["hangup_cause"] == 16
            assert seconds_between(done["answered_at"], done["ended_at"]) >= 1.2
            assert "call.max_duration" in types(done)
            await restarted.wait_in_use("api", 0)
        finally:
            await app.close()


class TestAmdTimeout:
    @pytest.fixture
    def overrides(self):
        return {"calls": {"amd_timeout": 0.3}}

    async def test_no_verdict_in_time_goes_on_as_unknown(self, voice, ami):
        # on_machine=hangup: "unknown" is not a machine, so the agent is connected.
        call_id = (await voice.place(amd=True, on_machine="hangup", on_answer=AGENT))["id"]
        call = await voice.wait_event(call_id, "call.bridged")
        assert call["status"] == "answered"
        assert (call["amd_result"], call["amd_detail"]) == (
            "unknown",
            "no verdict within 0.3 s of the answer",
        )
        waited = seconds_between(call["answered_at"], _at(call, "call.amd_timeout"))
        assert waited >= 0.3, waited
        seen = types(call)
        assert ordered(
            seen, ["call.answered", "call.amd_timeout", "call.amd", "call.agent_dialing"]
        ), seen
        verdict = next(e for e in call["timeline"] if e["type"] == "call.amd")
        assert verdict["data"]["result"] == "unknown" and verdict["data"]["source"] == "timeout"

        # AMD() speaks up after all (09b): recorded, but the call has moved on.
        ch = ami.find_channel(f"tl-{call_id}-1")
        ami.emit(sc.varset(ch, "AMDSTATUS", "MACHINE"))
        ami.emit(sc.varset(ch, "AMDCAUSE", "LONGGREETING-1500-1500"))
        late = await voice.wait_event(call_id, "call.amd_late")
        assert late["status"] == "answered" and late["amd_result"] == "unknown"
        entry = next(e for e in late["timeline"] if e["type"] == "call.amd_late")
        assert entry["data"]["result"] == "machine"
        assert "call.hangup_requested" not in types(late)
        await voice.post(f"/v1/calls/{call_id}/hangup")
        await voice.wait(call_id, "completed")


class TestAmdInTime:
    @pytest.fixture
    def overrides(self):
        return {"calls": {"amd_timeout": 1.0}}

    async def test_a_verdict_in_time_wins_and_the_timeout_does_nothing(self, voice, ami):
        call_id = (await voice.place(amd=True, on_machine="hangup", on_answer=AGENT))["id"]
        await voice.wait(call_id, "answered")
        ch = ami.find_channel(f"tl-{call_id}-1")
        ami.emit(sc.varset(ch, "AMDSTATUS", "MACHINE"))  # 09b, well before the 1 s are up
        ami.emit(sc.varset(ch, "AMDCAUSE", "LONGGREETING-1500-1500"))
        done = await voice.wait(call_id, "completed")
        await asyncio.sleep(max(0.0, 1.2 - done["durations"]["talk_seconds"]))  # past it
        after = await voice.get(call_id)
        assert after["amd_result"] == "machine"
        assert "call.amd_timeout" not in types(after) and after["agent"] is None


def _at(call: dict, kind: str) -> str:
    return next(e["at"] for e in call["timeline"] if e["type"] == kind)
