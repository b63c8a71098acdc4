"""A campaign the pool bounds (max_concurrent above the pool) dials ahead: a lead of dials
waits for a channel (queued, never a 429) and takes the one given back at once, while live
calls and the pool's holders stay within the pool."""

from __future__ import annotations

import asyncio

import pytest

from tests.campaigns.test_dialer import list_numbers

POOL = 8


@pytest.fixture
def overrides():
    return {
        "pools": {"sizes": {"api": 4, "campaign": POOL, "ivr": 1}},
        "campaigns": {"dial_lead": 0.25},
    }


async def test_a_pool_bound_campaign_dials_ahead_within_the_pool(campaigns, client):
    from gateway.campaigns.tasks import DIALER
    from gateway.pipeline.calls import VOICE

    dialer = client.app[DIALER]
    assert dialer.dial_limit(100) == POOL + 2 and dialer.dial_limit(5) == 5
    pool = client.app[VOICE].pools.get("campaign")
    c = await campaigns.create(
        pacing={"max_concurrent": 100, "cps": 100}, retry={"max_attempts": 1}
    )
    answering = [x for x in list_numbers(400) if int(x[-2:]) <= 54][:40]
    await campaigns.add(c["id"], [{"number": x} for x in answering])
    peaks = {"claimed": 0, "live": 0, "held": 0}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            claimed, live = await campaigns.db.fetchrow(
                "SELECT (SELECT count(*) FROM campaign_prospects WHERE status = 'dialing'),"
                " (SELECT count(*) FROM calls WHERE status IN ('dialing', 'ringing', 'answered'))"
            )
            held = len(await pool.holders())
            for name, value in (("claimed", claimed), ("live", live), ("held", held)):
                peaks[name] = max(peaks[name], value)
            await asyncio.sleep(0.03)

    sampling = asyncio.create_task(sample())
    await campaigns.act(c["id"], "start")
    done = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=60)
    stop.set()
    await sampling
    assert done["prospects"] == {"total": 40, "done": 40}
    assert POOL < peaks["claimed"] <= POOL + 2, peaks  # ahead of the channels, by the lead
    assert peaks["live"] <= POOL and peaks["held"] <= POOL, peaks
    rejected = await campaigns.db.fetchval(
        "SELECT count(*) FROM calls WHERE status <> 'completed' OR error_code IS NOT NULL"
    )
    assert rejected == 0  # nothing refused for a full pool: the lead waited for channels
