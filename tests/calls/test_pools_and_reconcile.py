"""Trunk pools through the API (429 pool_exhausted + Retry-After, GET /v1/pools) and the
reconcile after an AMI reconnect: CoreShowChannels is the truth."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.calls.conftest import Voice, eventually, types
from tests.helpers import auth


@pytest.fixture
def overrides():
    return {"pools": {"sizes": {"api": 2, "campaign": 1}, "reconcile_min_age": 0.0}}


async def test_a_full_pool_answers_429_with_retry_after(voice, ami):
    first = (await voice.place(to="+14155550401", headers={"Idempotency-Key": "k1"}))["id"]
    second = (await voice.place(to="+14155550402"))["id"]
    await voice.wait(first, "answered")
    await voice.wait(second, "answered")
    pools = await voice.pools()
    assert pools["api"] == {"name": "api", "trunk": "default", "size": 2, "in_use": 2, "waiting": 0}

    full = await voice.place(to="+14155550403", expect=429, headers={"Idempotency-Key": "k3"})
    assert full["code"] == "pool_exhausted" and full["pool"] == "api" and full["size"] == 2
    assert "in_use" not in full and "waiting" not in full, "the trunk's load is not the tenant's"
    assert 1 <= int(full["_headers"]["Retry-After"]) <= 30
    assert len(ami.actions("Originate")) == 2, "nothing was dialled"
    # Other pools are untouched by the API pool being full.
    other = await voice.place(to="+14155550404", pool="campaign")
    assert other["pool"] == "campaign"
    # The refusal was not stored: the same key succeeds once a channel is free.
    await voice.post(f"/v1/calls/{first}/hangup")
    await voice.wait(first, "completed")
    retried = await voice.place(to="+14155550403", headers={"Idempotency-Key": "k3"})
    assert retried["status"] == "queued"
    replay = await voice.place(to="+14155550401", headers={"Idempotency-Key": "k1"})
    assert replay["id"] == first and replay["_headers"].get("Idempotent-Replayed") == "true"
    unknown = await voice.place(pool="nope", expect=422)
    assert unknown["code"] == "unknown_pool"


async def test_reconnect_reconciles_calls_and_permits(voice, ami):
    live = (await voice.place(to="+14155550411"))["id"]
    ends = (await voice.place(to="+14155550412"))["id"]
    await voice.wait(live, "answered")
    await voice.wait(ends, "answered")
    assert await voice.in_use("api") == 2
    tracker = voice.runtime.trackers["asterisk:main"]
    before = tracker.reconciles

    # The AMI connection drops; while it is down the far end hangs up one call.
    await ami.refuse_connections()
    await ami.drop_connections()
    ami.remote_hangup(f"tl-{ends}-1")  # nobody is listening for its Hangup
    await asyncio.sleep(0.1)
    assert (await voice.get(ends))["status"] == "answered", "nothing observed it"
    await ami.accept_connections()

    closed = await voice.wait(ends, "completed")
    assert closed["error_detail"] == "the call ended while the AMI connection was down"
    assert "call.reconciled" in types(closed) and "call.permit_released" in types(closed)
    await eventually(lambda: tracker.reconciles > before)
    adopted = await voice.get(live)
    assert adopted["status"] == "answered" and "call.adopted" in types(adopted)
    assert await voice.in_use("api") == 1  # the ended call's permit is back, not the live one's

    # The adopted call is tracked as before: its hangup is seen and releases its permit.
    await voice.post(f"/v1/calls/{live}/hangup")
    assert (await voice.wait(live, "completed"))["hangup_cause"] == 16
    await voice.wait_in_use("api", 0)


async def test_reconcile_releases_permits_nobody_holds_and_adopts_missed_answers(voice, ami):
    pool = voice.runtime.pools.get("api")
    await pool.try_acquire("a-holder-that-died")  # e.g. a worker killed before writing its call
    ami.pause()  # events are held: the answer is not seen before the reconnect
    call_id = (await voice.place(to="+14155550421"))["id"]
    await asyncio.sleep(0.2)
    tracker = voice.runtime.trackers["asterisk:main"]
    before = tracker.reconciles
    await ami.drop_connections()
    ami.resume()
    call = await voice.wait(call_id, "answered")
    assert "call.adopted" in types(call)
    await eventually(lambda: tracker.reconciles > before)
    assert await pool.holders() == [call_id]


class TestWaiting:
    @pytest.fixture
    def overrides(self):
        return {
            "pools": {"sizes": {"campaign": 1}, "lease": 0.6, "renew_interval": 0.15},
            "calls": {"pool_wait": 0.2},
        }

    async def test_campaign_dispatch_waits_for_a_channel_and_live_calls_keep_theirs(
        self, voice, ami
    ):
        from gateway.calls.schemas import PlaceCall

        first = (await voice.place(to="+14155550431", pool="campaign"))["id"]
        await voice.wait(first, "answered")
        me = await (await voice.client.get("/v1/whoami", headers=auth(voice.token))).json()
        waiting = await voice.runtime.pipeline.accept(
            uuid.UUID(me["tenant_id"]),
            None,
            PlaceCall.model_validate(
                {"to": "+14155550432", "pool": "campaign", "purpose": "transactional"}
            ),
            trace_id="c" * 32,
            wait_for_pool=True,
        )
        second = waiting.body["id"]
        assert waiting.status == 201 and waiting.body["status"] == "queued"
        call = await voice.wait_event(second, "call.waiting_for_pool")
        waited = next(e for e in call["timeline"] if e["type"] == "call.waiting_for_pool")
        assert waited["data"] == {"pool": "campaign", "size": 1}, "not the trunk's load"
        await asyncio.sleep(1.0)  # longer than the 0.6 s lease: only renewals keep it held
        assert await voice.runtime.pools.get("campaign").holders() == [first]
        assert (await voice.get(second))["status"] == "queued"
        await voice.post(f"/v1/calls/{first}/hangup")
        await voice.wait(second, "answered")
        assert [a.get("ChannelId") for a in ami.actions("Originate")] == [
            f"tl-{first}-1",
            f"tl-{second}-1",
        ]


class TestTenantView:
    """The pools are the whole trunk's; GET /v1/pools shows a tenant only its own calls."""

    @pytest.fixture
    def overrides(self):
        return {"pools": {"sizes": {"api": 2, "campaign": 1}}, "calls": {"pool_wait": 5.0}}

    async def test_a_tenant_sees_its_own_channels_and_waiting_calls_not_the_others(
        self, voice, ami, client, make_key
    ):
        from gateway.calls.schemas import PlaceCall

        other = Voice(client, await make_key("globex"))
        holding = (await voice.place(to="+14155550441", pool="campaign"))["id"]
        mine = (await voice.place(to="+14155550442"))["id"]
        await voice.wait(holding, "answered")
        await voice.wait(mine, "answered")
        theirs_me = await (await client.get("/v1/whoami", headers=auth(other.token))).json()
        queued = await voice.runtime.pipeline.accept(  # a campaign call: it waits for a channel
            uuid.UUID(theirs_me["tenant_id"]),
            None,
            PlaceCall.model_validate(
                {"to": "+14155550443", "pool": "campaign", "purpose": "transactional"}
            ),
            trace_id="d" * 32,
            wait_for_pool=True,
        )
        theirs = queued.body["id"]

        async def views() -> tuple[dict, dict]:
            return await voice.pools(), await other.pools()

        for _ in range(250):  # the dispatch queues it for the campaign channel (up to 5 s)
            if (await other.pools())["campaign"]["waiting"]:
                break
            await asyncio.sleep(0.02)
        acme, globex = await views()
        assert {n: (p["in_use"], p["waiting"]) for n, p in acme.items()} == {
            "api": (1, 0),
            "campaign": (1, 0),
            "ivr": (0, 0),
        }
        assert {n: (p["in_use"], p["waiting"]) for n, p in globex.items()} == {
            "api": (0, 0),
            "campaign": (0, 1),
            "ivr": (0, 0),
        }
        assert acme["campaign"]["size"] == globex["campaign"]["size"] == 1

        # The channel passes from one tenant to the other: each view follows its own calls.
        await voice.post(f"/v1/calls/{holding}/hangup")
        await other.wait(theirs, "answered")
        acme, globex = await views()
        assert (acme["campaign"]["in_use"], globex["campaign"]["in_use"]) == (0, 1)
        assert globex["campaign"]["waiting"] == 0


class TestRetryAfterRoundsUp:
    @pytest.fixture
    def overrides(self):
        hint = 1.4  # what the pool says; a rounded 1 would send the client back too soon
        return {"pools": {"sizes": {"api": 1}, "retry_after_min": hint, "retry_after_max": hint}}

    async def test_retry_after_is_never_shorter_than_the_wait(self, voice, ami):
        first = (await voice.place(to="+14155550431"))["id"]
        await voice.wait(first, "answered")
        full = await voice.place(to="+14155550432", expect=429)
        assert full["retry_after"] == 1.4
        assert full["_headers"]["Retry-After"] == "2"


async def test_renewing_a_call_that_just_ended_does_not_take_its_channel_back(
    voice, ami, monkeypatch
):
    """The renewer reads the live calls, then renews each: one that ends in between has
    given its permit back, and taking it back for it would hold a channel for nobody."""
    from gateway.calls import repo

    service = voice.runtime.service
    call_id = (await voice.place(to="+14155550441"))["id"]
    await voice.wait(call_id, "answered")
    stale = await repo.live_calls(service.db)  # read while it is live...
    await voice.post(f"/v1/calls/{call_id}/hangup")
    await voice.wait(call_id, "completed")  # ...then it ends
    await voice.wait_in_use("api", 0)

    async def as_read_before(db):
        return stale

    monkeypatch.setattr(repo, "live_calls", as_read_before)
    await service.renew_permits()
    assert await voice.in_use("api") == 0


async def test_a_call_that_ended_before_its_renewal_into_a_full_pool_lost_no_permit(
    voice, ami, monkeypatch
):
    """As above, with its channel taken by the next calls meanwhile (the pool full, as at a
    campaign's start): the renewal finds neither its permit nor room. That call is over, not
    a live call without a permit — no `permit_lost` (the false alarm bench.campaign logged
    once at start), and the pool still holds just the calls on the trunk."""
    from gateway.calls import repo

    service = voice.runtime.service
    call_id = (await voice.place(to="+14155550451"))["id"]
    await voice.wait(call_id, "answered")
    stale = await repo.live_calls(service.db)
    await voice.post(f"/v1/calls/{call_id}/hangup")
    await voice.wait(call_id, "completed")
    await voice.wait_in_use("api", 0)
    for to in ("+14155550452", "+14155550453"):  # the pool (api: 2) is full again
        await voice.wait((await voice.place(to=to))["id"], "answered")

    async def as_read_before(db):
        return stale

    monkeypatch.setattr(repo, "live_calls", as_read_before)
    await service.renew_permits()
    lost = await service.db.fetch("SELECT subject FROM events WHERE type = 'call.permit_lost'")
    assert lost == []
    assert await voice.in_use("api") == 2
