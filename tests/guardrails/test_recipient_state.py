"""The recipient's `state` (API field on messages and calls): validated, stored, and the
state's calling-hour rules and frequency caps apply at accept and again at dispatch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.app import create_app
from gateway.pipeline.wiring import CHAIN
from tests.guardrails.conftest import OPT_OUT_LINE, dispatch_ready
from tests.helpers import auth

NY = "+12125550143"
# Tue 2026-11-24 01:30 UTC = Mon 20:30 in New York and in Miami: TCPA open (until 21:00),
# Florida closed (501.616: until 20:00)
FL_CLOSED = datetime(2026, 11, 24, 1, 30, tzinfo=UTC)
NOON = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)


@pytest.fixture
async def api(aiohttp_client, settings, make_key):
    client = await aiohttp_client(create_app(settings, role="api"))
    client.token = await make_key("acme")
    yield client
    await client.close()


async def post(client, path: str, body: dict, status: int = 201) -> dict:
    resp = await client.post(path, json=body, headers=auth(client.token))
    out = await resp.json()
    assert resp.status == status, out
    return out


async def test_state_is_validated_normalised_and_stored(api, pg_pool):
    api.app[CHAIN].clock = lambda: NOON
    sale = {"to": NY, "body": f"Sale! {OPT_OUT_LINE}"}
    msg = await post(api, "/v1/messages", sale | {"state": " fl "})
    assert msg["state"] == "FL"
    got = await (await api.get(f"/v1/messages/{msg['id']}", headers=auth(api.token))).json()
    assert got["state"] == "FL"
    call = await post(api, "/v1/calls", {"to": NY, "purpose": "transactional", "state": "ny"})
    assert call["state"] == "NY"
    got = await (await api.get(f"/v1/calls/{call['id']}", headers=auth(api.token))).json()
    assert got["state"] == "NY"
    assert (await post(api, "/v1/messages", sale))["state"] is None
    for bad in ("XX", "Florida", "", 12):
        for path, body in (("/v1/messages", sale), ("/v1/calls", {"to": NY})):
            out = await post(api, path, body | {"state": bad}, status=422)
            assert out["code"] == "validation_error" and "state" in out["detail"], out
    assert (
        await pg_pool.fetchval(
            "SELECT recipient_state FROM messages WHERE id = $1::uuid", msg["id"]
        )
        == "FL"
    )


async def test_the_address_state_s_hours_apply_at_accept_and_at_dispatch(api, pg_pool):
    api.app[CHAIN].clock = lambda: FL_CLOSED
    sale = {"to": NY, "body": f"Sale! {OPT_OUT_LINE}"}
    # a New York number: open until 21:00 ... unless its owner lives in Florida
    assert (await post(api, "/v1/messages", sale))["status"] == "queued"
    deferred = await post(api, "/v1/messages", sale | {"to": "+12125550144", "state": "FL"})
    assert deferred["status"] == "scheduled"
    # Florida's zones come too, and its panhandle is Central: 08:00 in Pensacola
    assert deferred["send_at"] == "2026-11-24T14:00:00Z"
    call = await post(api, "/v1/calls", {"to": "+12125550145", "state": "FL"})
    assert call["status"] == "scheduled"
    # accepted at noon, dispatched at 20:30: the stored state still applies
    api.app[CHAIN].clock = lambda: NOON
    queued = await post(api, "/v1/messages", sale | {"to": "+12125550146", "state": "FL"})
    assert queued["status"] == "queued"
    api.app[CHAIN].clock = lambda: FL_CLOSED
    await dispatch_ready(api.app)
    row = await pg_pool.fetchrow(
        "SELECT status, send_at FROM messages WHERE id = $1::uuid", queued["id"]
    )
    assert row["status"] == "scheduled" and row["send_at"] == datetime(
        2026, 11, 24, 14, 0, tzinfo=UTC
    )
    defer = await pg_pool.fetchval(
        "SELECT data FROM events WHERE subject = $1 AND type = 'guardrail.defer'", queued["id"]
    )
    assert defer["stage"] == "dispatch" and "fl.501.616.6" in defer["rule"], defer
    assert defer["inputs"]["states"]["address"] == "FL"


async def test_the_address_state_s_frequency_cap_applies(api):
    api.app[CHAIN].clock = lambda: NOON
    sale = {"to": NY, "body": f"Sale! {OPT_OUT_LINE}", "state": "FL"}
    for _ in range(3):
        await post(api, "/v1/messages", sale)
    out = await post(api, "/v1/messages", sale, status=429)
    assert out["code"] == "frequency_cap" and out["rule"] == "frequency_cap.fl.501.616.6"


async def test_a_frequency_cap_counts_per_number_whatever_the_subject(api):
    """The API has no subject: a `same_subject` cap counts every contact to the number (the
    documented, stricter reading), and GET /v1/limits says so."""
    api.app[CHAIN].clock = lambda: NOON
    miami = "+13055550150"
    for subject in ("Shoes on sale", "New store hours", "Win a cruise"):
        await post(api, "/v1/messages", {"to": miami, "body": f"{subject}! {OPT_OUT_LINE}"})
    out = await post(
        api, "/v1/messages", {"to": miami, "body": f"Garden tools! {OPT_OUT_LINE}"}, status=429
    )
    assert out["code"] == "frequency_cap"
    limits = await (await api.get("/v1/limits", headers=auth(api.token))).json()
    florida = next(c for c in limits["frequency_caps"] if c["rule"] == "fl.501.616.6")
    assert florida["scope"] == "same_subject" and florida["counted"] == "per_number"
