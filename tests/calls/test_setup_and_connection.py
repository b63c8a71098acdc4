"""Voice edges of issue 10 item 11, on the test AMI server.

(a) Not being connected to Asterisk is our outage, not a provider failure: a call accepted
    while Asterisk restarts waits for the connection, spending no try, and is dialled after it.
(b) Nothing answers the INVITE (03f: no ringing, no progress, only the Hangup at the end of
    the Originate Timeout): given up after calls.setup_timeout, not the whole ring_timeout.
"""

from __future__ import annotations

import time

import pytest

from tests.amisim import FarEndDown, NoAnswer
from tests.calls.conftest import eventually, types


class TestAsteriskRestart:
    @pytest.fixture
    def overrides(self):
        return {
            "providers": {"voice": {"fallback": None}},
            "calls": {"max_attempts": 2, "connect_wait": 0.3},
        }

    async def test_calls_accepted_during_a_restart_are_dialled_after_it(self, voice, ami):
        await ami.shutdown(restart=True, down_for=2.0)  # Shutdown, EOF, refused for 2 s
        ids = [(await voice.place(to=f"+1415555060{i}"))["id"] for i in range(3)]
        for call_id in ids:
            call = await voice.wait(call_id, "answered", timeout=15)
            assert [a["outcome"] for a in call["attempts"]] == ["originated"], call["attempts"]
            assert "call.attempt_failed" not in types(call)
        assert len(ami.actions("Originate")) == 3


class TestAsteriskGone:
    @pytest.fixture
    def overrides(self):
        return {
            "providers": {"voice": {"fallback": None}},
            "calls": {"connect_wait": 0.2, "unavailable_max": 1.5},
        }

    async def test_a_call_waits_for_the_connection_only_so_long(self, voice, ami):
        await ami.refuse_connections()
        await ami.drop_connections()
        call_id = (await voice.place())["id"]
        done = await voice.wait(call_id, "failed", timeout=15)
        assert done["error_code"] == "provider_unavailable"
        assert done["attempts"] == [], "nothing was tried: nothing could be"
        assert not ami.actions("Originate")
        await voice.wait_in_use("api", 0)


class TestSetupTimeout:
    @pytest.fixture
    def overrides(self):
        return {
            "calls": {"setup_timeout": 0.5},
            "providers": {"voice": {"fallback": "sandbox"}},
            "pools": {"sizes": {"api": 8}},
        }

    async def test_a_far_end_that_never_answers_the_invite_is_given_up_early(self, voice, ami):
        ami.outcomes["+14155550701"] = FarEndDown(wait_for=30)  # Asterisk would wait it out
        ami.outcomes["+14155550702"] = NoAnswer(ring_for=1.5)  # rings: not a setup failure
        started = time.monotonic()
        down = (await voice.place(to="+14155550701", ring_timeout=30))["id"]
        rings = (await voice.place(to="+14155550702", ring_timeout=30))["id"]

        # The fallback (the sandbox) is tried at once.
        done = await voice.wait(down, "completed", timeout=10)
        assert time.monotonic() - started < 5, "not after the ring timeout"
        assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [
            ("asterisk:main", "failed_over"),
            ("sandbox", "originated"),
        ]
        failover = next(e for e in done["timeline"] if e["type"] == "call.failover")
        assert failover["data"]["reason"] == "no_response"
        failed = next(e for e in done["timeline"] if e["type"] == "call.attempt_failed")
        assert failed["data"]["error_code"] == "no_response" and failed["data"]["failover"]
        # Its leg on Asterisk was hung up by its own key; a late report of it changes nothing.
        await ami.wait_for_action("Hangup", timeout=5)
        hangups = [a.get("Channel") for a in ami.actions("Hangup")]
        assert hangups == [f"tl-{down}-1"]
        await eventually(lambda: ami.find_channel(f"tl-{down}-1") is None)

        rang = await voice.wait(rings, "no_answer", timeout=10)
        assert rang["error_code"] == "no_answer" and len(rang["attempts"]) == 1
        assert "call.failover" not in types(rang)
        await voice.wait_in_use("api", 0)


class TestSetupTimeoutWithoutFallback:
    @pytest.fixture
    def overrides(self):
        return {"calls": {"setup_timeout": 0.5}, "providers": {"voice": {"fallback": None}}}

    async def test_it_fails_as_unreachable_now_not_after_the_ring_timeout(self, voice, ami):
        ami.outcomes["+14155550711"] = FarEndDown(wait_for=30)
        started = time.monotonic()
        call_id = (await voice.place(to="+14155550711", ring_timeout=30))["id"]
        done = await voice.wait(call_id, "failed", timeout=10)
        assert time.monotonic() - started < 5
        assert done["error_code"] == "no_response" and done["sip_code"] is None
        ended = next(e for e in done["timeline"] if e["type"] == "call.failed")
        assert ended["data"]["source"] == "ami:SetupTimeout"
        await ami.wait_for_action("Hangup", timeout=5)
        assert [a.get("Channel") for a in ami.actions("Hangup")] == [f"tl-{call_id}-1"]
        await voice.wait_in_use("api", 0)
