"""Rate limits hold under 200 concurrent senders: never more than the limit in any window."""

from __future__ import annotations

import asyncio
import time

from gateway.app import create_app
from gateway.redis import create_redis
from guardrails import ratelimit
from tests.guardrails.conftest import action, merged
from tests.helpers import auth


def max_in_window(times_us: list[int], window_s: float) -> int:
    times = sorted(times_us)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window_s * 1_000_000:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_200_concurrent_senders_never_exceed_the_bucket(make_chain, tenant):
    tid, _ = tenant
    rate, burst = 20.0, 5
    chain = make_chain(
        guardrails={
            "checks": ["rate_limits"],
            "rate_limits": {
                "tenant": {"rate": rate, "burst": burst},
                "destination": {"rate": 1000.0, "burst": 1000},
            },
        }
    )
    admitted: list[int] = []
    refused = 0
    stop_at = time.monotonic() + 1.5

    async def sender(n: int) -> None:
        nonlocal refused
        while time.monotonic() < stop_at:
            d = await chain.evaluate(action(tid, to=f"+1212555{n:04d}"), stage="accept")
            if d.allowed:
                admitted.append(d.event.data["inputs"]["rate_limits"]["at_us"])
            else:
                assert d.verdict.code == "rate_limited"
                refused += 1

    await asyncio.gather(*(sender(n) for n in range(200)))
    assert refused > len(admitted) > burst
    span_s = (max(admitted) - min(admitted)) / 1e6
    assert len(admitted) <= burst + int(span_s * rate)
    for window in (0.05, 0.25, 0.5, 1.0):
        assert max_in_window(admitted, window) <= burst + int(window * rate), window


async def test_the_script_is_all_or_nothing_under_contention(redis_url):
    """Two buckets, 200 concurrent hits: each admitted hit took from both, refused ones from neither."""
    client = create_redis(redis_url, max_connections=256)  # 200 calls really in flight at once
    a = ratelimit.Bucket("a", "tl:test:a", rate=0.001, burst=50)
    b = ratelimit.Bucket("b", "tl:test:b", rate=0.001, burst=80)
    cap = ratelimit.Cap("c", "tl:test:c", max=60, window_s=60)
    outcomes = await asyncio.gather(
        *(ratelimit.hit(client, [a, b], [cap], member=str(i)) for i in range(200))
    )
    assert sum(o.admitted for o in outcomes) == 50
    peek = await ratelimit.hit(client, [a, b], [cap], member="peek", dry_run=True)
    assert [x["remaining"] for x in peek.buckets] == [0, 30]
    assert peek.caps[0]["count"] == 50
    await client.aclose()


async def test_200_concurrent_api_requests_get_exactly_the_burst(
    aiohttp_client, settings, make_key
):
    cfg = merged(
        settings,
        guardrails={
            "policy": {"exempt_transactional_from_calling_hours": True},
            "rate_limits": {"tenant": {"rate": 0.01, "burst": 20}},
        },
    )
    client = await aiohttp_client(create_app(cfg, role="api"))
    token = await make_key("acme")

    async def send(n: int):
        resp = await client.post(
            "/v1/messages",
            json={
                "to": f"+1212555{n:04d}",
                "body": "Your code is 1234",
                "purpose": "transactional",
            },
            headers=auth(token),
        )
        return resp.status, await resp.json(), resp.headers.get("Retry-After")

    results = await asyncio.gather(*(send(n) for n in range(200)))
    statuses = [s for s, _, _ in results]
    assert statuses.count(201) == 20 and statuses.count(429) == 180
    refused = [(body, ra) for s, body, ra in results if s == 429]
    assert {body["code"] for body, _ in refused} == {"rate_limited"}
    assert all(int(ra) >= 1 for _, ra in refused)
    assert refused[0][0]["rule"] == "rate_limit.tenant"
    limits = await (await client.get("/v1/limits", headers=auth(token))).json()
    tenant_row = next(r for r in limits["rate_limits"] if r["limit"] == "tenant")
    assert (tenant_row["rate"], tenant_row["burst"], tenant_row["remaining"]) == (0.01, 20, 0)
    await client.close()
