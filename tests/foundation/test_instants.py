"""Usage periods: an instant that overflows when moved to UTC, or outside 1970–9998, is a 422
at the edge (the fuzzer found `0001-01-01T00:00:00+01:00` answered 500)."""

from __future__ import annotations

import pytest

from tests.helpers import auth


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/usage/voice"])
@pytest.mark.parametrize(
    "start",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1960-01-01T00:00:00"],
)
async def test_a_period_out_of_range_is_a_422(client, make_key, path, start):
    token = await make_key("acme")
    resp = await client.get(
        path, params={"from": start, "to": "2026-12-01T00:00:00Z"}, headers=auth(token)
    )
    assert resp.status == 422, await resp.text()
    assert resp.content_type == "application/problem+json"


async def test_a_period_with_offsets_is_answered(client, make_key):
    token = await make_key("acme")
    resp = await client.get(
        "/v1/usage",
        params={"from": "2026-11-01T00:00:00+01:00", "to": "2026-12-01T00:00:00Z"},
        headers=auth(token),
    )
    assert resp.status == 200, await resp.text()
