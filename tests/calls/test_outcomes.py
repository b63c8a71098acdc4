"""How a call ends on the trunk: the hangup cause decides the final state, and only a failure
of our side or the carrier (503 congestion, no response at all) is tried on another provider —
a busy, declined, not-found or unanswered call is an outcome, never a reason to dial again.

Each test places its calls side by side (one number per far-end behaviour), so one app serves
all the cases."""

from __future__ import annotations

import pytest

from tests.amisim import (
    BUSY,
    DECLINE,
    FAR_END_DOWN,
    NO_ANSWER,
    NOT_FOUND,
    UNAVAILABLE,
    Reject,
)
from tests.calls.conftest import types

# far end → (number, final status, Q.850 cause, SIP code, error_code, fails over?)
CASES = {
    "busy-486": (BUSY, "+14155550301", "busy", 17, 486, "user_busy", False),
    "decline-603": (DECLINE, "+14155550302", "no_answer", 21, 603, "declined", False),
    "notfound-404": (NOT_FOUND, "+14155550303", "failed", 1, 404, "not_found", False),
    "no-answer": (NO_ANSWER, "+14155550304", "no_answer", 19, 480, "no_answer", False),
    "congestion-503": (UNAVAILABLE, "+14155550305", "failed", 34, 503, "congestion", True),
    "far-end-down": (FAR_END_DOWN, "+14155550306", "failed", 19, 480, "unreachable", True),
}


async def place_all(voice, ami) -> dict[str, str]:
    ids = {}
    for name, (outcome, number, *_rest) in CASES.items():
        ami.outcomes[number] = outcome
        ids[name] = (await voice.place(to=number, ring_timeout=10))["id"]
    return ids


class TestWithoutFallback:
    @pytest.fixture
    def overrides(self):
        return {
            "providers": {"voice": {"fallback": None}},
            "calls": {"max_attempts": 5},
            "pools": {"sizes": {"api": 16}},
        }

    async def test_hangup_causes_map_to_the_final_states(self, voice, ami):
        ids = await place_all(voice, ami)
        for name, call_id in ids.items():
            _, _, status, cause, sip, code, _ = CASES[name]
            done = await voice.wait(call_id, status)
            got = (done["hangup_cause"], done["sip_code"], done["error_code"])
            assert got == (cause, sip, code), name
            # 480 here is Asterisk's mapping of cause 19: no 480 arrived (item 11c).
            assert done["sip_code_source"] == ("mapped" if sip == 480 else "sip"), name
            assert done["hangup_cause_text"] and done["ended_at"] and not done["answered_at"]
            assert len(done["attempts"]) == 1, "no other provider is configured"
            assert "call.permit_released" in types(done)
        await voice.wait_in_use("api", 0)

    async def test_the_order_of_the_failure_events_does_not_matter(self, voice, ami):
        orders = [
            ("OriginateResponse", "DialEnd", "Hangup"),
            ("Hangup", "DialEnd", "OriginateResponse"),
            ("DialEnd", "Hangup", "OriginateResponse"),
        ]
        ids = []
        for i, order in enumerate(orders):
            number = f"+1415555032{i}"
            ami.outcomes[number] = Reject(486, order=order)
            ids.append((await voice.place(to=number))["id"])
        for call_id in ids:
            assert (await voice.wait(call_id, "busy"))["hangup_cause"] == 17

    async def test_ambiguous_originate_is_retried_on_the_same_asterisk_under_the_same_key(
        self, voice, ami
    ):
        ami.muted.add("originate")  # received, never answered: AMITimeout after 1 s
        call_id = (await voice.place())["id"]
        await ami.wait_for_action("Originate")
        call = await voice.wait_event(call_id, "call.attempt_failed", timeout=5)
        ami.muted.clear()
        failed = next(e for e in call["timeline"] if e["type"] == "call.attempt_failed")
        assert failed["data"]["ambiguous"] is True and failed["data"]["code"] == "timeout"
        done = await voice.wait(call_id, "answered", timeout=15)
        keys = {a.get("ChannelId") for a in ami.actions("Originate")}
        assert keys == {f"tl-{call_id}-1"}, "the retry keeps its key"
        assert [(a["provider"], a["n"]) for a in done["attempts"]] == [("asterisk:main", 1)]


class TestFailover:
    """providers.voice.fallback = sandbox: which failures move the call there."""

    @pytest.fixture
    def overrides(self):
        return {"providers": {"voice": {"fallback": "sandbox"}}, "pools": {"sizes": {"api": 16}}}

    async def test_only_carrier_failures_fail_over_and_never_after_answer(self, voice, ami):
        ids = await place_all(voice, ami)
        answered = (await voice.place(to="+14155550310"))["id"]
        for name, call_id in ids.items():
            _, _, status, *_, fails_over = CASES[name]
            if not fails_over:
                done = await voice.wait(call_id, status)
                assert [a["provider"] for a in done["attempts"]] == ["asterisk:main"], name
                assert "call.failover" not in types(done)
                continue
            done = await voice.wait(call_id, "completed")  # the sandbox answers, then ends
            assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [
                ("asterisk:main", "failed_over"),
                ("sandbox", "originated"),
            ], name
            failover = next(e for e in done["timeline"] if e["type"] == "call.failover")
            assert failover["data"] | {"n": 1} == {
                "n": 1,
                "from": "asterisk:main",
                "to": "sandbox",
                "reason": CASES[name][5],
            }
        await voice.wait(answered, "answered")
        ami.remote_hangup(f"tl-{answered}-1")  # 02d: the far end hangs up: Cause 0
        done = await voice.wait(answered, "completed")
        assert done["hangup_cause"] == 0 and len(done["attempts"]) == 1
        await voice.wait_in_use("api", 0)

    async def test_asterisk_unreachable_fails_over_at_once(self, voice, ami):
        await ami.refuse_connections()
        await ami.drop_connections()
        call_id = (await voice.place())["id"]
        done = await voice.wait(call_id, "completed")
        assert [(a["provider"], a["outcome"]) for a in done["attempts"]] == [
            ("asterisk:main", "transient_error"),
            ("sandbox", "originated"),
        ]
        failed = next(e for e in done["timeline"] if e["type"] == "call.attempt_failed")
        assert failed["data"]["code"] == "ami_not_connected"
        assert failed["data"]["ambiguous"] is False
        assert not ami.actions("Originate")
