"""The dialer on the sandbox: every prospect ends final, concurrency within bounds, retries at
the policy's times, no attempt dialled twice; pause / resume / cancel; DNC at dispatch."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from datetime import timedelta

import pytest

from gateway.providers.sandbox.voice import (
    ANSWERS,
    BUSY,
    CARRIER_FAILS,
    DECLINES,
    MACHINE,
    NO_ANSWER,
    behaves_as,
)
from gateway.resources import RESOURCES
from tests.helpers import eventually

POOL = 64  # the campaign pool here (the trunk default is 60)


@pytest.fixture
def overrides():
    return {"pools": {"sizes": {"api": 4, "campaign": POOL, "ivr": 1}}}


NPAS = ["212", "312", "415", "617", "713", "305", "206", "303", "404", "503"]
RETRY = 0.3  # seconds: retry.busy / no_answer / machine .after


def list_numbers(n: int) -> list[str]:
    """n numbers of the sandbox list profile (+1 NPA 555 2xyz), spread over area codes."""
    # 37 is prime to 1000: the last two digits spread over the profile even for a short list
    return [f"+1{NPAS[i % 10]}5552{(i // 10 * 37) % 1000:03d}" for i in range(n)]


def expected(number: str) -> tuple[str, str, int]:
    """(status, reason, attempts) a list number ends with under the test's policy."""
    as_ = behaves_as(number)
    if as_ == ANSWERS:
        return "done", "answered", 1
    if as_ == CARRIER_FAILS:
        return "done", "failed", 1
    outcome = {BUSY: "busy", NO_ANSWER: "no_answer", DECLINES: "no_answer", MACHINE: "machine"}
    return "max_attempts", outcome[as_], 2


def config(max_concurrent: int, **more) -> dict:
    return {
        "name": "list",
        "amd": True,
        "on_machine": "retry",
        "pacing": {"max_concurrent": max_concurrent, "cps": 100},
        "retry": {
            "busy": {"after": f"{RETRY}s"},
            "no_answer": {"after": f"{RETRY}s"},
            "machine": {"after": f"{RETRY}s"},
            "max_attempts": 2,
        },
        "ring_timeout": 15,
    } | more


class Sampler:
    """Samples, while the campaign runs, the campaign's live calls (not yet final) and the
    campaign pool's holders in Redis: the largest of each is kept."""

    def __init__(self, campaigns, pool) -> None:
        self.campaigns = campaigns
        self.pool = pool
        self.max_live = 0
        self.max_held = 0
        self.samples = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            live = await self.campaigns.db.fetchval(
                "SELECT count(*) FROM calls WHERE pool = 'campaign' "
                "AND status IN ('queued', 'dialing', 'ringing', 'answered')"
            )
            held = (await self.pool.holders()).__len__()
            self.max_live = max(self.max_live, live)
            self.max_held = max(self.max_held, held)
            self.samples += 1
            await asyncio.sleep(0.15)


async def attempts_of(db, campaign_id: str) -> list:
    return await db.fetch(
        """
        SELECT a.prospect_id, a.n, a.outcome, a.created_at, a.ended_at, c.status, c.metadata,
               p.number
          FROM campaign_attempts a JOIN calls c ON c.id = a.call_id
          JOIN campaign_prospects p ON p.id = a.prospect_id
         WHERE a.campaign_id = $1 ORDER BY a.prospect_id, a.n
        """,
        campaign_id,
    )


@pytest.mark.parametrize("n", [1000])
async def test_list_campaign_runs_to_the_end(campaigns, client, n):
    from gateway.pipeline.calls import VOICE

    c = await campaigns.create(**config(max_concurrent=60))
    numbers = list_numbers(n)
    added = await campaigns.add(c["id"], [{"number": x} for x in numbers])
    assert added["added"] == n
    voice = client.app[VOICE]
    sampler = Sampler(campaigns, voice.pools.get("campaign"))
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    started = time.monotonic()
    await campaigns.act(c["id"], "start")
    final = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=120)
    took = time.monotonic() - started
    stop.set()
    await sampling
    print(f"{n} prospects: {took:.1f} s; max live {sampler.max_live}, held {sampler.max_held}")

    want = Counter(expected(x)[0] for x in numbers)
    assert final["prospects"] == {"total": n, **want}
    page = await campaigns.request("GET", f"/v1/campaigns/{c['id']}/prospects?limit=1000", 200)
    got = {p["number"]: (p["status"], p["reason"], p["attempts"]) for p in page["data"]}
    assert got == {x: expected(x) for x in numbers}

    attempts = await attempts_of(campaigns.db, c["id"])
    assert len(attempts) == sum(expected(x)[2] for x in numbers)
    answered = sum(1 for x in numbers if behaves_as(x) == ANSWERS)
    stats = final["stats"]
    assert stats["dials"] == len(attempts)
    assert stats["outcomes"]["answered"] == answered
    assert stats["outcomes"]["machine"] == 2 * sum(1 for x in numbers if behaves_as(x) == MACHINE)
    assert stats["answer_rate"] == round(answered / len(attempts), 4)
    # One call per (prospect, attempt), and it is that attempt's call.
    keys = [(a["metadata"]["prospect_id"], a["metadata"]["attempt"]) for a in attempts]
    assert len(set(keys)) == len(keys)
    assert all(str(a["prospect_id"]) == a["metadata"]["prospect_id"] for a in attempts)
    # … and the 'network' was asked to ring each attempt exactly once.
    redis = client.app[RESOURCES].redis
    keys = [k async for k in redis.scan_iter(match="tl:sandbox:sandbox:voice:sent:*")]
    sent = [int(v) for v in await redis.mget(keys)] if keys else []
    assert len(sent) == len(attempts) and set(sent) == {1}, Counter(sent)
    # Retries waited for the policy's delay after the first attempt ended.
    by_prospect: dict[int, list] = {}
    for a in attempts:
        by_prospect.setdefault(a["prospect_id"], []).append(a)
    retried = [v for v in by_prospect.values() if len(v) == 2]
    assert retried
    for first, second in retried:
        assert second["created_at"] - first["ended_at"] >= timedelta(seconds=RETRY)
    assert 0 < sampler.max_live <= 60 and sampler.max_held <= POOL
    # campaign.progress: at most one a second, with the prospects by status.
    progress = await campaigns.db.fetch(
        "SELECT created_at, data FROM events WHERE subject = $1 AND type = 'campaign.progress' "
        "ORDER BY created_at",
        c["id"],
    )
    assert len(progress) >= 2
    gaps = [b["created_at"] - a["created_at"] for a, b in itertools.pairwise(progress)]
    assert min(gaps) >= timedelta(seconds=1)
    assert sum(progress[-1]["data"]["prospects"].values()) == n


async def test_a_claim_whose_process_died_is_sent_once_under_its_key(campaigns, client):
    """The crash windows, made deterministic: (1) a worker dies after committing its claim,
    before the call exists — the prospect is an orphan, re-sent by another worker under the
    same key; (2) a worker sends, then another sends the same attempt again (it could not
    know the first had committed) — the key replays the first call, nothing new is dialled."""
    from gateway.campaigns.tasks import DIALER

    dialer = client.app[DIALER]
    c = await campaigns.create(pacing={"max_concurrent": 2, "cps": 100})
    numbers = [x for x in list_numbers(400) if int(x[-2:]) <= 54][:2]  # they answer
    await campaigns.add(c["id"], [{"number": x} for x in numbers])

    sent: list = []

    async def dies_after_claim(campaign, prospect) -> None:
        sent.append((campaign, prospect))  # committed claim; the process dies here

    dialer._place_attempt, real_place = dies_after_claim, dialer._place_attempt  # type: ignore[method-assign]
    try:
        await campaigns.act(c["id"], "start")
        await eventually(lambda: _claimed(sent, 2), timeout=10)
    finally:
        dialer._place_attempt = real_place  # type: ignore[method-assign]
    rows = await campaigns.db.fetch(
        "SELECT status, attempts FROM campaign_prospects WHERE campaign_id = $1::uuid", c["id"]
    )
    assert {(r["status"], r["attempts"]) for r in rows} == {("dialing", 1)}
    assert await campaigns.db.fetchval("SELECT count(*) FROM calls") == 0

    # (2) first prospect: sent twice by "two workers" → one call.
    campaign, first = sent[0]
    await dialer._place_attempt(campaign, first)
    await dialer._place_attempt(campaign, first)
    # (1) second prospect: an orphan once orphan_after has passed → re-sent once.
    dialer.orphan_after = 0.0
    assert await dialer.redial_orphans() == 1
    assert await dialer.redial_orphans() == 0  # it has its attempt row now
    done = await campaigns.wait(c["id"], lambda x: x["status"] == "completed", timeout=30)
    assert done["prospects"] == {"total": 2, "done": 2}
    calls = await campaigns.db.fetch("SELECT to_number, metadata FROM calls")
    assert sorted(r["to_number"] for r in calls) == sorted(numbers)
    assert {r["metadata"]["attempt"] for r in calls} == {"1"}


async def _claimed(sent: list, n: int) -> bool:
    return len(sent) >= n
