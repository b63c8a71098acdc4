"""Channels Asterisk no longer has (issue 10 items 0 and 00), on the test AMI server.

- A restart numbers channel names from 0 again: a hangup or bridge of a call from before the
  restart must reach no call placed after it (they are addressed by the Uniqueid we chose).
- A call that ended while the AMI connection was down is closed on reconnect — also when it
  is younger than pools.reconcile_min_age — at the last moment we knew it was up, so its talk
  time and bill leave the outage out. "No such channel" for a call we saw up closes it too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import pytest

from gateway.providers.contracts import CallRef, ProviderError
from tests.calls.conftest import eventually, types


@pytest.fixture
def overrides():
    # The default min age: the calls in these tests are all younger than it.
    return {
        "pools": {"reconcile_min_age": 10.0},
        "asterisk": {"main": {"ping_interval": 0.1}},
    }


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def reconciled_after(voice, before: int, timeout: float = 5.0) -> None:
    tracker = voice.runtime.trackers["asterisk:main"]
    await eventually(lambda: tracker.reconciles > before, timeout=timeout)


async def test_after_a_restart_hangup_and_bridge_of_a_stale_call_touch_no_other_call(voice, ami):
    stale = (await voice.place(to="+14155550501"))["id"]
    other = (await voice.place(to="+14155550502"))["id"]
    s = await voice.wait(stale, "answered")
    o = await voice.wait(other, "answered")
    assert {s["channel"], o["channel"]} == {"PJSIP/carrier-00000000", "PJSIP/carrier-00000001"}
    tracker = voice.runtime.trackers["asterisk:main"]
    before = tracker.reconciles

    await ami.shutdown(restart=True, down_for=0.2)  # Shutdown, EOF; the channels are gone
    await reconciled_after(voice, before)
    # New calls after the restart take the same names.
    v = (await voice.place(to="+14155550503"))["id"]
    w = (await voice.place(to="+14155550504"))["id"]
    reused = {(await voice.wait(c, "answered"))["channel"]: c for c in (v, w)}
    assert set(reused) == {s["channel"], o["channel"]}, "the names were reused"
    assert ami.find_channel(s["channel"]).uniqueid == f"tl-{reused[s['channel']]}-1"

    # The stale calls were closed by the reconcile, young as they are, at the last moment
    # we knew them up (before the restart), not when we noticed.
    for call_id in (stale, other):
        closed = await voice.wait(call_id, "completed", timeout=5)
        assert "call.reconciled" in types(closed)
        assert at(closed["ended_at"]) <= at(closed["alive_at"]) or closed["alive_at"] is None
    hangups_before = len(ami.actions("Hangup"))
    await voice.post(f"/v1/calls/{stale}/hangup")
    problem = await voice.post(f"/v1/calls/{stale}/bridge", expect=409, call_id=w)
    assert problem["code"] == "call_not_answered"

    # The adapter itself, handed the stale calls as they were stored (their old names):
    # it addresses the Uniqueids, and Asterisk has none of them.
    provider = voice.runtime.registry.voice("asterisk:main")
    stale_ref = CallRef("asterisk:main", f"tl-{stale}-1", f"tl-{stale}-1", s["channel"])
    other_ref = CallRef("asterisk:main", f"tl-{other}-1", f"tl-{other}-1", o["channel"])
    w_ref = CallRef("asterisk:main", f"tl-{w}-1", f"tl-{w}-1", o["channel"])
    with pytest.raises(ProviderError) as gone:
        await provider.hangup(stale_ref)
    assert gone.value.code == "call_gone"
    with pytest.raises(ProviderError) as gone:
        await provider.bridge(stale_ref, other_ref)
    assert gone.value.code == "call_gone"
    with pytest.raises(ProviderError) as gone:
        await provider.bridge(w_ref, stale_ref)
    assert gone.value.code == "call_gone"

    assert not ami.actions("Bridge"), "nothing was bridged"
    hangups = ami.actions("Hangup")[hangups_before:]
    assert [h.get("Channel") for h in hangups] == [f"tl-{stale}-1"]
    for call_id in (v, w):
        assert (await voice.get(call_id))["status"] == "answered"
        assert ami.find_channel(f"tl-{call_id}-1") is not None, "untouched"


async def test_no_such_channel_for_a_call_we_saw_up_closes_it(voice, ami):
    call_id = (await voice.place())["id"]
    up = await voice.wait(call_id, "answered")
    # Its channel goes without a trace (events lost): Asterisk no longer has it.
    del ami.channels[up["channel"]]
    await asyncio.sleep(0.3)
    await voice.post(f"/v1/calls/{call_id}/hangup")
    closed = await voice.wait(call_id, "completed", timeout=5)
    assert [a.get("Channel") for a in ami.actions("Hangup")] == [f"tl-{call_id}-1"]
    assert closed["error_detail"].endswith("it ended unobserved")
    [reconciled] = [e for e in closed["timeline"] if e["type"] == "call.reconciled"]
    assert reconciled["data"]["by"] == "control:hangup"
    # Dated when we last knew it up (its answer), not when the hangup found it gone.
    asked = next(e for e in closed["timeline"] if e["type"] == "call.hangup_requested")
    assert at(closed["ended_at"]) < at(asked["at"])
    assert closed["durations"]["talk_seconds"] < 0.3
    await voice.wait_in_use("api", 0)


async def test_a_call_that_ends_during_a_reconnect_is_closed_with_its_real_talk_time(
    voice, ami, client
):
    call_id = (await voice.place(to="+14155550511"))["id"]
    up = await voice.wait(call_id, "answered")
    await asyncio.sleep(0.6)  # talking
    dropped = time.time()
    await ami.refuse_connections()
    await ami.drop_connections()
    ami.remote_hangup(f"tl-{call_id}-1")  # the far end hangs up; nobody hears its Hangup
    hung_up = time.time()
    await asyncio.sleep(1.5)  # the outage
    tracker = voice.runtime.trackers["asterisk:main"]
    before = tracker.reconciles
    await ami.accept_connections()

    closed = await voice.wait(call_id, "completed", timeout=5)
    await reconciled_after(voice, before)
    talk = closed["durations"]["talk_seconds"]
    real = hung_up - at(up["answered_at"]).timestamp()
    # Up to the last Ping answered before the drop (ping_interval 0.1 s): the real talk
    # time within that, and none of the 1.5 s outage.
    assert real - 0.35 <= talk <= real + 0.05, (talk, real, dropped)
    assert closed["error_detail"] == "the call ended while the AMI connection was down"
    assert "call.permit_released" in types(closed)
    await voice.wait_in_use("api", 0)
    usage = await client.get(
        "/v1/usage/voice?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
        headers={"Authorization": f"Bearer {voice.token}"},
    )
    assert (await usage.json())["billable_seconds"] == 1  # 0.6 s rounded up, not 2+


class TestYoungUnseen:
    @pytest.fixture
    def overrides(self):
        return {"pools": {"reconcile_min_age": 1.0}}

    async def test_a_call_too_young_to_judge_is_looked_at_again_until_settled(self, voice, ami):
        call_id = (await voice.place(to="+14155550521"))["id"]
        up = await voice.wait(call_id, "answered")
        # As if its Originate had just been queued and no event of its channel seen yet,
        # and the channel never comes: Asterisk has nothing for it.
        del ami.channels[up["channel"]]
        await voice.runtime.service.db.execute(
            "UPDATE calls SET status = 'dialing', channel = NULL, ringing_at = NULL,"
            " answered_at = NULL, alive_at = NULL WHERE id = $1",
            uuid.UUID(call_id),
        )
        tracker = voice.runtime.trackers["asterisk:main"]
        before = tracker.reconciles
        await ami.drop_connections()  # a reconnect reconciles: too young, spared
        await reconciled_after(voice, before)
        assert (await voice.get(call_id))["status"] == "dialing"
        closed = await voice.wait(call_id, "failed", timeout=5)  # looked at again, settled
        assert closed["error_code"] == "ended_unobserved"
        await reconciled_after(voice, before + 1)  # by a second pass, not the reconnect's


async def test_a_bridge_with_a_call_asterisk_no_longer_has_closes_it_and_frees_the_other(
    voice, ami
):
    gone = (await voice.place(to="+14155550531"))["id"]
    other = (await voice.place(to="+14155550532"))["id"]
    up = await voice.wait(gone, "answered")
    await voice.wait(other, "answered")
    del ami.channels[up["channel"]]  # its end was never seen
    await voice.post(f"/v1/calls/{gone}/bridge", call_id=other)
    closed = await voice.wait(gone, "completed", timeout=5)
    failed = await voice.wait_event(gone, "call.control_failed")
    [event] = [e for e in failed["timeline"] if e["type"] == "call.control_failed"]
    assert (event["data"]["op"], event["data"]["code"]) == ("bridge", "call_gone")
    assert closed["error_detail"].endswith("it ended unobserved")
    assert not ami.actions("Bridge"), "nothing was joined"
    alone = await voice.get(other)
    assert alone["status"] == "answered" and alone["bridged_with"] is None
    assert ami.find_channel(f"tl-{other}-1") is not None
