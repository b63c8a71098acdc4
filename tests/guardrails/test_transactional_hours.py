"""Calling hours govern solicitations (47 CFR 64.1200(c)(1) and the state windows): by default
a transactional message or call goes out at any hour; a tenant may opt its transactional
traffic in to calling hours; marketing is never exempt."""

from __future__ import annotations

import pytest

from gateway.app import create_app
from tests.clock import next_local
from tests.guardrails.conftest import OPT_OUT_LINE, merged
from tests.helpers import auth

SANDBOX = "+14155550100"  # Los Angeles, the zone of tests/clock.py's instants


@pytest.fixture
async def api(aiohttp_client, settings, make_key):
    """The shipped default policy, plus one tenant that opted in to hours for transactional."""
    cfg = merged(
        settings,
        guardrails={"tenants": {"strict": {"exempt_transactional_from_calling_hours": False}}},
    )
    client = await aiohttp_client(create_app(cfg, role="api"))
    client.tokens = {"acme": await make_key("acme"), "strict": await make_key("strict")}
    yield client
    await client.close()


async def post(client, path: str, tenant: str, body: dict) -> dict:
    resp = await client.post(path, json=body, headers=auth(client.tokens[tenant]))
    out = await resp.json()
    assert resp.status == 201, out
    return out


@pytest.mark.hours
async def test_transactional_is_exempt_by_default_marketing_never(
    api, time_of_day, guardrail_clock
):
    night = time_of_day == "night"
    code = {"to": SANDBOX, "body": "Your code is 1234", "purpose": "transactional"}
    sale = {"to": SANDBOX, "body": f"Sale! {OPT_OUT_LINE}"}
    call = {"to": SANDBOX, "purpose": "transactional"}
    # default policy: a code goes out at 03:00; a sale waits for 08:00
    assert (await post(api, "/v1/messages", "acme", code))["status"] == "queued"
    assert (await post(api, "/v1/calls", "acme", call))["status"] == "queued"
    deferred = await post(api, "/v1/messages", "acme", sale)
    assert deferred["status"] == ("scheduled" if night else "queued")
    # a tenant that opted in: its transactional traffic keeps calling hours too
    strict = await post(api, "/v1/messages", "strict", code)
    assert strict["status"] == ("scheduled" if night else "queued")
    strict_call = await post(api, "/v1/calls", "strict", call)
    assert strict_call["status"] == ("scheduled" if night else "queued")
    if night:  # both wait for 08:00 in Los Angeles
        assert deferred["send_at"] == strict["send_at"] == next_local(guardrail_clock.start, 8)
