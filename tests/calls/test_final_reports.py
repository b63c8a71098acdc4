"""A provider's final report ends the call whatever live status we held (issue 10 item 7),
and a final status never moves again."""

from __future__ import annotations

from gateway.calls.states import can_move, settled
from gateway.providers.contracts import CallReport
from tests.calls.conftest import types


def test_a_final_report_settles_any_live_status():
    assert settled("answered", "canceled") == "completed"
    assert settled("answered", "failed") == "completed"
    assert settled("answered", "busy") == "completed"
    assert settled("ringing", "canceled") == "canceled"
    for live in ("scheduled", "queued", "dialing", "ringing", "answered"):
        assert can_move(live, settled(live, "completed")), live
    for final in ("completed", "busy", "no_answer", "failed", "canceled", "rejected"):
        for reported in ("completed", "canceled", "failed", "answered"):
            assert not can_move(final, settled(final, reported)), (final, reported)


async def test_provider_reports_an_answered_call_canceled_it_ends_completed(voice, ami):
    call_id = (await voice.place())["id"]
    await voice.wait(call_id, "answered")
    assert await voice.in_use("api") == 1
    key = f"tl-{call_id}-1"
    service = voice.runtime.service

    # E.g. a Hangup classified by a tracker that never saw the answer, or a provider callback
    # that says "canceled" for a call that was up: the call is over all the same.
    await service.apply_report(
        CallReport(
            provider="asterisk:main",
            attempt_key=key,
            status="canceled",
            hangup_cause=16,
            hangup_cause_text="Normal Clearing",
            error_code="canceled",
            source="test:provider",
        )
    )
    done = await voice.get(call_id)
    assert done["status"] == "completed", done["status"]
    assert done["hangup_cause"] == 16 and done["error_code"] is None
    assert done["ended_at"] is not None and done["durations"]["talk_seconds"] is not None
    [completed] = [e for e in done["timeline"] if e["type"] == "call.completed"]
    assert completed["data"]["reported"] == "canceled"
    assert "call.permit_released" in types(done)
    await voice.wait_in_use("api", 0)

    # Monotonic: a later final report of another kind changes nothing.
    await service.apply_report(
        CallReport(provider="asterisk:main", attempt_key=key, status="busy", source="test:late")
    )
    again = await voice.get(call_id)
    assert again["status"] == "completed" and again["ended_at"] == done["ended_at"]
    assert "call.status_noop" in types(again)
