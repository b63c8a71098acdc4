"""Voice usage metering: each answered call is metered when it ends — one call and its talk
time rounded up to the second — per provider, per tenant, over a [from, to) period; the same
figures appear beside the messaging lines of GET /v1/usage."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.calls import repo
from gateway.providers.sandbox import voice as sandbox
from tests.amisim import BUSY
from tests.calls.conftest import Voice
from tests.helpers import auth

SANDBOX_DID = "+14155550990"  # the tenant's number on the sandbox: its calls go there


def billable(call: dict) -> int:
    talk = datetime.fromisoformat(call["ended_at"]) - datetime.fromisoformat(call["answered_at"])
    return math.ceil(talk.total_seconds())


def period(**shift: float) -> dict[str, str]:
    now = datetime.now(UTC)
    start = now - timedelta(minutes=10) + timedelta(**shift)
    return {"from": start.isoformat(), "to": (start + timedelta(minutes=20)).isoformat()}


async def usage(voice: Voice, path: str = "/v1/usage/voice", **params: str) -> dict:
    resp = await voice.client.get(path, params=params, headers=auth(voice.token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
def overrides():
    return {"calls": {"sandbox_call_duration": 0.2}}


async def test_answered_calls_are_metered_per_provider_in_rounded_up_seconds(
    voice, ami, client, make_key, pg_pool
):
    ami.outcomes["+14155550183"] = BUSY
    long_id = (await voice.place(to="+14155550181", max_duration=1))["id"]
    short_id = (await voice.place(to="+14155550182"))["id"]
    busy_id = (await voice.place(to="+14155550183"))["id"]
    # Once the tenant owns a voice number on the sandbox, its calls go there.
    me = await (await client.get("/v1/whoami", headers=auth(voice.token))).json()
    await pg_pool.execute(
        "INSERT INTO dids (number, tenant_id, provider, capabilities) VALUES ($1, $2, $3, $4)",
        SANDBOX_DID,
        uuid.UUID(me["tenant_id"]),
        "sandbox",
        ["voice"],
    )
    sb_id = (await voice.place(to=sandbox.ANSWERS, **{"from": SANDBOX_DID}))["id"]
    await voice.wait(short_id, "answered")
    await voice.post(f"/v1/calls/{short_id}/hangup")
    long, short = await voice.wait(long_id, "completed"), await voice.wait(short_id, "completed")
    sb = await voice.wait(sb_id, "completed")
    assert (await voice.wait(busy_id, "busy"))["answered_at"] is None
    assert sb["provider"] == "sandbox" and long["provider"] == "asterisk:main"
    talk = datetime.fromisoformat(long["ended_at"]) - datetime.fromisoformat(long["answered_at"])
    assert billable(long) > talk.total_seconds() > 1.0, "1.0x s of talk is billed as 2 s"

    ast_seconds = billable(long) + billable(short)
    got = await usage(voice, **period())
    assert got["providers"] == [
        {"provider": "asterisk:main", "calls": 2, "billable_seconds": ast_seconds},
        {"provider": "sandbox", "calls": 1, "billable_seconds": billable(sb)},
    ]
    assert (got["calls"], got["billable_seconds"]) == (3, ast_seconds + billable(sb))

    # The same usage beside messaging's, in the one usage endpoint.
    lines = (await usage(voice, "/v1/usage", **period()))["lines"]
    assert [line for line in lines if line["channel"] == "voice"] == [
        {"channel": "voice", "unit": "voice_call", "quantity": 3, "records": 3, "exported": 0},
        {
            "channel": "voice",
            "unit": "voice_second",
            "quantity": got["billable_seconds"],
            "records": 3,
            "exported": 0,  # no Stripe export configured (tests/billing)
        },
    ]

    # Metering a call again (a re-applied end, reconcile racing the Hangup) changes nothing.
    async with pg_pool.acquire() as conn:
        await repo.record_voice_usage(conn, uuid.UUID(long_id))
    assert (await usage(voice, **period()))["billable_seconds"] == got["billable_seconds"]

    # A call counts in the period it ended in; another tenant has none of it.
    earlier = await usage(voice, **period(minutes=-30))
    assert (earlier["calls"], earlier["billable_seconds"], earlier["providers"]) == (0, 0, [])
    stranger = Voice(client, await make_key("globex"))
    assert (await usage(stranger, **period()))["calls"] == 0


async def test_a_bad_period_is_a_validation_problem(voice):
    resp = await voice.client.get(
        "/v1/usage/voice",
        params={"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
        headers=auth(voice.token),
    )
    assert resp.status == 422 and resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == "validation_error" and "to must be after from" in problem["detail"]
    resp = await voice.client.get(
        "/v1/usage/voice", params={"from": "2030-01-01T00:00:00Z"}, headers=auth(voice.token)
    )
    assert resp.status == 422 and (await resp.json())["code"] == "validation_error"
    naive = await usage(voice, **{"from": "2030-01-01T00:00:00", "to": "2030-01-02T00:00:00"})
    assert naive["from"].startswith("2030-01-01T00:00:00") and naive["from"].endswith("Z")
