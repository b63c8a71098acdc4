"""sip.calls.CallTracker alone: AMI events from the test server → CallReports, no database.

Correlation by the ChannelId we choose (Uniqueid, then Linkedid), the OriginateResponse that
comes before or after the channel events, and the cause → status table of sip.calls.causes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.providers.contracts import CallReport
from sip.ami import AMIClient
from sip.calls import CallTracker, LeaderLease, LiveLeg, Reconciled, attempt_key, parse
from sip.calls.causes import classify
from tests.amisim import BUSY, UNAVAILABLE, AMISimServer, Answer, Reject
from tests.amisim import scenarios as sc
from tests.calls.conftest import eventually


class Sink:
    def __init__(self) -> None:
        self.reports: list[CallReport] = []
        self.reconciled: list[list[LiveLeg]] = []
        self.alive: list[tuple[list[str], float]] = []

    async def report_many(self, reports: list[CallReport]) -> None:
        self.reports.extend(reports)

    async def reconcile(
        self, provider: str, live: Sequence[LiveLeg], channel_ids: Sequence[str]
    ) -> Reconciled:
        self.reconciled.append(list(live))
        return Reconciled()

    async def mark_alive(self, provider: str, attempt_keys: Sequence[str], ago: float) -> None:
        self.alive.append((list(attempt_keys), ago))

    def statuses(self, key: str, leg: str = "customer") -> list[str]:
        return [
            r.status for r in self.reports if r.attempt_key == key and r.leg == leg and r.status
        ]

    async def final(self, key: str) -> CallReport:
        async with asyncio.timeout(3):
            while True:
                for r in self.reports:
                    if r.attempt_key == key and r.status in (
                        "completed",
                        "busy",
                        "no_answer",
                        "failed",
                        "canceled",
                    ):
                        return r
                await asyncio.sleep(0.005)


@pytest.fixture
async def ami() -> AsyncIterator[AMISimServer]:
    async with AMISimServer() as server:
        yield server


@pytest.fixture
async def tracked(ami) -> AsyncIterator[tuple[AMIClient, Sink, CallTracker]]:
    client = AMIClient("127.0.0.1", ami.port, "gateway", "secret", action_timeout=1.0)
    sink = Sink()
    tracker = CallTracker(client, "asterisk:t", sink)
    tracker.attach()
    await client.start()
    yield client, sink, tracker
    await tracker.close()
    await client.close()


def new_key() -> str:
    return attempt_key(uuid.uuid4(), 1)


async def originate(client: AMIClient, number: str, key: str) -> None:
    await client.originate(f"PJSIP/{number}@carrier", context="x", channel_id=key, ring_timeout=6)


@pytest.mark.parametrize(
    "position", ["before_up", "after_up", "after_dialend"]
)  # 02a/02b/08: where OriginateResponse falls
async def test_answered_call_reports_in_order_wherever_originate_response_falls(
    position, ami, tracked
):
    client, sink, _ = tracked
    ami.outcomes["5550100"] = Answer(originate_response=position, hangup_after=0.01)  # type: ignore[arg-type]
    key = new_key()
    await originate(client, "5550100", key)
    final = await sink.final(key)
    assert sink.statuses(key) == ["dialing", "ringing", "answered", "completed"]
    assert (final.hangup_cause, final.failover, final.channel) == (
        16,
        False,
        "PJSIP/carrier-00000000",
    )
    assert final.provider_call_id == key


async def test_rejections_and_the_linkedid_leg(ami, tracked):
    client, sink, _ = tracked
    ami.outcomes["5550486"] = Reject(486, order=("Hangup", "DialEnd", "OriginateResponse"))
    ami.outcomes["5550503"] = UNAVAILABLE
    busy, congested = new_key(), new_key()
    await originate(client, "5550486", busy)
    await originate(client, "5550503", congested)
    b, c = await sink.final(busy), await sink.final(congested)
    assert (b.status, b.hangup_cause, b.sip_code, b.failover) == ("busy", 17, 486, False)
    assert (c.status, c.hangup_cause, c.sip_code, c.failover) == ("failed", 34, 503, True)

    # A channel Asterisk creates from ours (the PJSIP leg of a Local/Dial originate, 02c)
    # carries our key only as Linkedid: its ringing and SIP code count, its Uniqueid is not ours.
    ami.outcomes["5550200"] = Answer(ring_for=10)
    key = new_key()
    await originate(client, "5550200", key)
    await asyncio.sleep(0.05)
    sub = sc.Channel("PJSIP/carrier-000000ff", "1795379895.4", "", "", linkedid=key)
    sub.state = 5
    ami.emit(sc.channel_event("Newstate", sub))
    ami.emit(sc.hangup(sub, 34, 503))
    ours = ami.find_channel(key)
    assert ours is not None
    ami.emit(sc.hangup(ours, 0))
    final = await sink.final(key)
    assert (final.status, final.sip_code, final.failover) == ("failed", 503, True)
    assert all(parse(r.provider_call_id) for r in sink.reports)


async def test_reconcile_rebuilds_what_was_seen_from_core_show_channels(ami, tracked):
    client, sink, _ = tracked
    key = new_key()
    await originate(client, "5550100", key)
    await asyncio.sleep(0.05)
    before = len(sink.reconciled)
    await ami.drop_connections()
    await client.wait_connected(2)
    await eventually(lambda: len(sink.reconciled) > before)
    [leg] = sink.reconciled[-1]
    assert (leg.key.attempt_key, leg.state, leg.channel) == (key, 6, "PJSIP/carrier-00000000")
    ch = ami.find_channel(key)
    assert ch is not None
    ami.remote_hangup(key)
    final = await sink.final(key)
    assert final.status == "completed", "the answer seen before the drop is remembered"


async def test_busy_from_a_failed_originate_of_an_unknown_channel_is_not_ours(ami, tracked):
    client, sink, _ = tracked
    ami.outcomes["5550486"] = BUSY
    await client.originate("PJSIP/5550486@carrier", context="x", channel_id="someone-else-1")
    await asyncio.sleep(0.1)
    assert sink.reports == []


def test_cause_table():
    assert classify(answered=True, rang=True, cause=17, sip_code=486).status == "completed"
    assert classify(answered=False, rang=True, cause=19, sip_code=480).status == "no_answer"
    unreachable = classify(answered=False, rang=False, cause=19, sip_code=480)
    assert (unreachable.status, unreachable.failover) == ("failed", True)
    assert classify(answered=False, rang=False, cause=None, sip_code=408).failover
    assert not classify(answered=False, rang=True, cause=21, sip_code=603).failover
    assert classify(answered=False, rang=True, cause=16, sip_code=None).status == "canceled"
    assert parse("tl-0e7e3a5a-1b0c-4a55-9d8b-0c7f2f1e8a11-2-agent").leg == "agent"
    assert parse("1795379895.4") is None and parse("tl-nope-1") is None


async def test_one_tracker_per_asterisk_across_processes(ami, redis_client):
    """Two workers (two AMI sessions) track the same Asterisk: only the lease holder reports;
    when it dies, the other takes over after the lease and reconciles first."""
    workers = []
    for _ in range(2):
        client = AMIClient("127.0.0.1", ami.port, "gateway", "secret", action_timeout=1.0)
        sink = Sink()
        tracker = CallTracker(client, "asterisk:t", sink)
        tracker.lease = LeaderLease(
            redis_client, "tl:ami:{t}:tracker", ttl=0.3, on_gained=tracker.reconcile
        )
        tracker.attach()
        await client.start()
        tracker.lease.start()
        workers.append((client, sink, tracker))
    t1, t2 = workers[0][2], workers[1][2]
    await eventually(lambda: t1.active or t2.active)
    leader, follower = (workers[0], workers[1]) if t1.active else (workers[1], workers[0])
    key = new_key()
    ami.outcomes["5550100"] = Answer(hangup_after=0.01)
    await originate(follower[0], "5550100", key)  # either worker may dial
    await leader[1].final(key)
    assert follower[1].reports == [], "only the lease holder writes call state"

    await leader[2].lease.close()  # the leader's process dies: it stops renewing
    await leader[0].close()
    await eventually(lambda: follower[2].active and follower[1].reconciled, timeout=3)
    key2 = new_key()
    await originate(follower[0], "5550100", key2)
    assert (await follower[1].final(key2)).status == "completed"
    await follower[2].lease.close()
    await follower[0].close()


async def test_a_sip_code_says_whether_a_sip_response_carried_it(ami, tracked):
    """03a-d: a SIP response ends the leg, and its HangupRequest carries it as TechCause.
    03e/03f: Asterisk itself gives up (ring timeout, nothing listening); only the Hangup has
    a TechCause, 480 — its mapping of cause 19, no 480 ever arrived (issue 10 item 11c)."""
    client, sink, _ = tracked
    ami.outcomes["5550486"] = BUSY
    ami.outcomes["5550480"] = sc.NoAnswer(ring_for=0.05)
    ami.outcomes["5550999"] = sc.FarEndDown(wait_for=0.05)
    busy, rang, down = new_key(), new_key(), new_key()
    for number, key in (("5550486", busy), ("5550480", rang), ("5550999", down)):
        await originate(client, number, key)
    b, r, d = await sink.final(busy), await sink.final(rang), await sink.final(down)
    assert (b.sip_code, b.sip_code_source) == (486, "sip")
    assert (r.status, r.sip_code, r.sip_code_source) == ("no_answer", 480, "mapped")
    assert (d.status, d.sip_code, d.sip_code_source) == ("failed", 480, "mapped")
