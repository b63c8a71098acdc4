"""Redis restarts empty under live calls (issue 10 item 6, DESIGN principle 10).

Three calls are answered on an 8-channel pool; FLUSHDB makes Redis forget every permit (as a
restart without persistence does); then twelve new calls race for channels. The calls table is
the truth: the three live calls must be holders again before the first new admission, and
live calls holding a permit never exceed the pool's size. A watcher samples the pool's lease
set in Redis throughout, so "before" is checked on every state Redis went through, not only
on the end state.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from gateway.redis import create_redis
from gateway.resources import RESOURCES
from tests.calls.conftest import Voice
from tests.helpers import auth

SIZE = 8
LEASES = "tl:pool:{default}:api:leases"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"pools": {"sizes": {"api": SIZE, "campaign": 1, "ivr": 1}}}


class LeaseWatcher:
    """Samples the pool's holders in Redis as fast as it can until stopped."""

    def __init__(self, redis_url: str, live: set[str]) -> None:
        self.redis = create_redis(redis_url)
        self.live = live
        self.samples: list[set[str]] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            got = await self.redis.zrange(LEASES, 0, -1)
            self.samples.append({h.decode() for h in got})
            await asyncio.sleep(0)

    def admissions_before_rebuild(self) -> list[set[str]]:
        """Samples where a new call held a channel while a live call did not."""
        return [s for s in self.samples if s - self.live and not self.live <= s]

    async def stop(self) -> None:
        self._stop.set()
        await self.redis.aclose()


async def live_holding(voice: Voice, pool: str = "api") -> int:
    """Live calls of `pool` (PostgreSQL) that hold a permit (Redis)."""
    db = voice.client.app[RESOURCES].db
    rows = await db.fetch(
        "SELECT id::text FROM calls WHERE pool = $1"
        " AND status IN ('dialing', 'ringing', 'answered')",
        pool,
    )
    holders = set(await voice.runtime.pools.get(pool).holders())
    return sum(r["id"] in holders for r in rows)


async def test_redis_restarting_empty_rebuilds_holders_before_admitting_anyone(
    voice: Voice, redis_url: str
) -> None:
    live = [(await voice.place(to=f"+1415555060{i}"))["id"] for i in range(3)]
    for call_id in live:
        await voice.wait(call_id, "answered")
    assert await voice.in_use("api") == 3

    raw = create_redis(redis_url)
    await raw.flushdb()  # Redis comes back empty: as far as it knows, 0 of 8 in use
    await raw.aclose()
    watcher = LeaseWatcher(redis_url, set(live))
    watching = asyncio.ensure_future(watcher.run())

    async def place(n: int) -> tuple[int, dict]:
        resp = await voice.client.post(
            "/v1/calls",
            json={"to": f"+141555507{n:02d}", "purpose": "transactional"},
            headers=auth(voice.token),
        )
        return resp.status, await resp.json()

    try:
        answers = await asyncio.gather(*(place(n) for n in range(12)))
    finally:
        await asyncio.sleep(0.05)
        await watcher.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watching, 5)

    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] * (SIZE - 3) + [429] * (12 - SIZE + 3), answers
    assert all(body["code"] == "pool_exhausted" for s, body in answers if s == 429)
    assert watcher.samples and not watcher.admissions_before_rebuild()
    assert all(len(s) <= SIZE for s in watcher.samples)
    pools = await voice.pools()
    assert pools["api"]["in_use"] == SIZE  # the three live calls plus five new ones

    admitted = [body["id"] for s, body in answers if s == 201]
    for call_id in admitted:
        await voice.wait(call_id, "answered")
    assert await live_holding(voice) == SIZE  # every live call holds one, never more than 8

    # The live calls keep their channels: renewing them after the loss is no PermitLost.
    await voice.runtime.service.renew_permits()
    assert await voice.in_use("api") == SIZE
    for call_id in live:
        assert "call.permit_lost" not in {e["type"] for e in (await voice.get(call_id))["timeline"]}


async def test_pools_view_shows_live_calls_right_after_the_loss(
    voice: Voice, redis_url: str
) -> None:
    call_id = (await voice.place(to="+14155550611"))["id"]
    await voice.wait(call_id, "answered")
    raw = create_redis(redis_url)
    await raw.flushdb()
    await raw.aclose()
    assert await voice.in_use("api") == 1, "a lost state is rebuilt, not shown as free"


async def test_a_call_being_dialled_is_restored_even_into_a_full_pool(voice: Voice) -> None:
    """A queued call whose attempt has no outcome yet may have its Originate on the wire: it
    counts as on the trunk, not as one that may wait for room."""
    call_id = (await voice.place(to="+14155550612"))["id"]
    await voice.wait(call_id, "answered")
    db = voice.client.app[RESOURCES].db
    await db.execute(  # as if caught between its attempt row and the provider's answer
        "UPDATE calls SET status = 'queued' WHERE id = $1::uuid", call_id
    )
    await db.execute("UPDATE call_attempts SET outcome = NULL WHERE call_id = $1::uuid", call_id)
    holders = await voice.runtime.service.permit_holders()
    assert list(holders["api"].live) == [call_id] and not holders["api"].pending
