"""A running campaign: pause / resume / cancel, a DNC entry that stops a prospect at dispatch,
and an SMS campaign's texts rendered with each prospect's variables."""

from __future__ import annotations

import asyncio

import pytest

from tests.campaigns.test_dialer import list_numbers
from tests.helpers import eventually

ANSWERING = [x for x in list_numbers(400) if int(x[-2:]) <= 54][:40]  # all answer at once


async def counts(campaigns, cid: str) -> dict:
    return (await campaigns.get(cid))["prospects"]


async def attempts(campaigns, cid: str) -> int:
    return await campaigns.db.fetchval(
        "SELECT count(*) FROM campaign_attempts WHERE campaign_id = $1::uuid", cid
    )


async def test_pause_resume_and_cancel(campaigns):
    c = await campaigns.create(pacing={"max_concurrent": 2, "cps": 20})
    cid = c["id"]
    await campaigns.add(cid, [{"number": x} for x in ANSWERING])
    await campaigns.act(cid, "start")
    await eventually(lambda: _at_least(campaigns, cid, "done", 4), timeout=30)
    await campaigns.act(cid, "pause")
    # Calls in progress finish; nothing new is dialled while paused.
    await eventually(lambda: _none_dialing(campaigns, cid), timeout=30)
    made = await attempts(campaigns, cid)
    await asyncio.sleep(1.0)  # several dialer steps (interval 0.1 s)
    assert await attempts(campaigns, cid) == made
    assert (await campaigns.get(cid))["status"] == "paused"
    await campaigns.act(cid, "resume")
    await eventually(lambda: _more_attempts(campaigns, cid, made + 2), timeout=30)
    cancel = await campaigns.act(cid, "cancel")
    assert cancel["status"] == "canceled" and cancel["prospects"].get("canceled", 0) > 0
    # What was dialling ends; the rest is canceled; nothing is claimed after the cancel.
    await eventually(lambda: _none_dialing(campaigns, cid), timeout=30)
    final = await counts(campaigns, cid)
    assert set(final) <= {"total", "done", "canceled"}, final
    assert final["done"] + final["canceled"] == len(ANSWERING)
    types = [
        r["type"]
        for r in await campaigns.db.fetch(
            "SELECT type FROM events WHERE subject = $1 ORDER BY id", cid
        )
    ]
    after_cancel = types[types.index("campaign.canceled") :]
    assert "campaign.prospect.dialing" not in after_cancel
    assert types.index("campaign.paused") < types.index("campaign.resumed")
    assert "campaign.completed" not in types


async def _at_least(campaigns, cid: str, status: str, n: int) -> bool:
    return (await counts(campaigns, cid)).get(status, 0) >= n


async def _none_dialing(campaigns, cid: str) -> bool:
    return (await counts(campaigns, cid)).get("dialing", 0) == 0


async def _more_attempts(campaigns, cid: str, n: int) -> bool:
    return await attempts(campaigns, cid) >= n


async def test_an_idle_dialer_skips_the_event_logs_wake_ups_and_starts_at_once(campaigns, client):
    """With no campaign running, the event log's wake-ups (every message's and call's change
    sends one) do not step the dialer; a campaign's start does, at once — not on the timer,
    which this test sets beyond its own length."""
    from gateway.campaigns.tasks import DIALER

    dialer = client.app[DIALER]
    steps = 0
    step = dialer.step

    async def counted() -> int:  # steps completed
        nonlocal steps
        moved = await step()
        steps += 1
        return moved

    dialer.step = counted
    await eventually(lambda: _stepped_idle(dialer, steps, 1), timeout=10)
    dialer.interval = 60.0  # from the step after the next one on, only a NOTIFY wakes it
    seen = steps
    await eventually(lambda: _stepped_idle(dialer, steps, seen + 1), timeout=10)
    before = steps
    c = await campaigns.create(pacing={"max_concurrent": 2, "cps": 20})  # events, NOTIFYs
    await campaigns.add(c["id"], [{"number": x} for x in ANSWERING[:2]])
    await asyncio.sleep(0.5)
    assert steps == before, "an idle dialer stepped on the event log's wake-ups"
    await campaigns.act(c["id"], "start")
    await eventually(lambda: _more_attempts(campaigns, c["id"], 1), timeout=10)
    assert steps > before


async def _stepped_idle(dialer, steps: int, at_least: int) -> bool:
    return steps >= at_least and dialer.idle


async def test_dnc_entry_added_while_the_call_waits_stops_it_at_dispatch(campaigns, client):
    """The call is accepted (the chain allows it), then waits for a channel: every permit of
    the campaign pool is held. The number is listed meanwhile; when a channel frees, the
    dispatch runs the chain again and refuses it. The prospect ends suppressed."""
    from gateway.pipeline.calls import VOICE

    pool = client.app[VOICE].pools.get("campaign")
    blockers = [f"blocker-{i}" for i in range(32)]
    for holder in blockers:
        await pool.try_acquire(holder)
    number = ANSWERING[0]
    c = await campaigns.create()
    await campaigns.add(c["id"], [{"number": number}, {"number": ANSWERING[1]}])
    await campaigns.act(c["id"], "start")

    async def queued() -> bool:
        n = await campaigns.db.fetchval(
            "SELECT count(*) FROM calls WHERE status = 'queued' AND pool = 'campaign'"
        )
        return n == 2

    await eventually(queued, timeout=30)
    await campaigns.request("POST", "/v1/dnc", 201, {"number": number, "source": "internal"})
    for holder in blockers:
        await pool.release(holder)
    done = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=30)
    assert done["prospects"] == {"total": 2, "done": 1, "suppressed": 1}
    page = await campaigns.request("GET", f"/v1/campaigns/{c['id']}/prospects", 200)
    got = {p["number"]: (p["status"], p["reason"]) for p in page["data"]}
    assert got == {number: ("suppressed", "dnc_listed"), ANSWERING[1]: ("done", "answered")}
    deny = await campaigns.db.fetchrow(
        """
        SELECT e.data FROM events e JOIN calls c ON e.subject = c.id::text
         WHERE c.to_number = $1 AND e.type = 'guardrail.deny'
        """,
        number,
    )
    assert deny["data"]["stage"] == "dispatch" and deny["data"]["code"] == "dnc_listed"


async def test_sms_campaign_renders_each_prospects_text(campaigns):
    c = await campaigns.create(
        name="sms",
        channel="sms",
        body="Hi {{first_name}}, your renewal is due. Reply STOP to opt out.",
        pacing={"max_concurrent": 5, "cps": 50},
    )
    people = {"+14155550141": "Ana", "+14155550142": "Bo", "+14155550143": "Cy"}
    added = await campaigns.add(
        c["id"], [{"number": n, "variables": {"first_name": f}} for n, f in people.items()]
    )
    assert added["added"] == 3
    await campaigns.act(c["id"], "start")
    done = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=30)
    assert done["prospects"] == {"total": 3, "done": 3}
    rows = await campaigns.db.fetch(
        """
        SELECT m.to_number, m.body, m.status, a.outcome FROM campaign_attempts a
          JOIN messages m ON m.id = a.message_id WHERE a.campaign_id = $1::uuid
        """,
        c["id"],
    )
    assert {r["to_number"]: r["body"] for r in rows} == {
        n: f"Hi {f}, your renewal is due. Reply STOP to opt out." for n, f in people.items()
    }
    assert {(r["status"], r["outcome"]) for r in rows} == {("delivered", "delivered")}


async def test_the_window_is_read_in_each_prospects_own_zone(campaigns, client):
    """Window 09:00-14:00: at the pinned noon in Los Angeles (15:00 in New York) the 415
    number is dialled and the 212 one waits; with the clock at 08:00 in Los Angeles (11:00 in
    New York) it is the other way round."""
    from datetime import timedelta

    from gateway.pipeline.wiring import CHAIN
    from tests.campaigns.conftest import NOON, PinnedClock

    la, ny = "+14155552000", "+12125552000"  # both answer (sandbox list profile)
    c = await campaigns.create(window={"days": "mon-fri", "start": "09:00", "end": "14:00"})
    await campaigns.add(c["id"], [{"number": la}, {"number": ny}])
    await campaigns.act(c["id"], "start")

    async def statuses() -> dict[str, str]:
        page = await campaigns.request("GET", f"/v1/campaigns/{c['id']}/prospects", 200)
        return {p["number"]: p["status"] for p in page["data"]}

    await eventually(lambda: _is(statuses, la, "done"), timeout=30)
    await asyncio.sleep(1.0)  # several dialer steps: New York stays outside its window
    assert (await statuses())[ny] == "pending"
    client.app[CHAIN].clock = PinnedClock(NOON - timedelta(hours=4))
    await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=30)
    assert await statuses() == {la: "done", ny: "done"}


async def _is(statuses, number: str, status: str) -> bool:
    return (await statuses()).get(number) == status


async def test_an_sms_attempt_row_commits_with_its_message(campaigns, client):
    """The messages pipeline writes the caller's row (a campaign's attempt) in the accepted
    message's own transaction: both or neither."""
    from gateway.messages.schemas import SendMessage
    from gateway.pipeline.wiring import PIPELINE
    from gateway.tenants.service import Principal

    pipeline = client.app[PIPELINE]
    tenant_id = await campaigns.db.fetchval("SELECT id FROM tenants WHERE name = 'acme'")
    principal = Principal(tenant_id, "acme", "campaign:test", ("*",))
    req = SendMessage.model_validate(
        {"channel": "sms", "to": "+14155550144", "body": "Hi", "purpose": "transactional"}
    )

    class Refused(Exception):
        pass

    async def fails(conn, message_id) -> None:
        raise Refused(str(message_id))

    with pytest.raises(Refused):
        await pipeline.accept(principal, req, trace_id="t-1", idempotency_key="k-1", attach=fails)
    assert await campaigns.db.fetchval("SELECT count(*) FROM messages") == 0

    seen: list = []

    async def records(conn, message_id) -> None:
        seen.append(
            (
                message_id,
                await conn.fetchval("SELECT status FROM messages WHERE id = $1", message_id),
            )
        )

    out = await pipeline.accept(
        principal, req, trace_id="t-2", idempotency_key="k-2", attach=records
    )
    [(message_id, status)] = seen
    assert str(message_id) == out.body["id"] and status == "queued"  # the row, uncommitted yet
