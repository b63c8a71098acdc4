"""Issue 14: concurrent evaluations share one suppression query, each action getting its own
facts (its number, its tenant, its clock), as the one-action query gives them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from gateway.core.ids import new_id
from tests.guardrails.conftest import action
from tests.guardrails.test_chain_checks import add_entry

OPEN = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)


async def test_concurrent_evaluations_share_one_query_and_keep_their_own_facts(
    make_chain, tenant, pg_pool
):
    tid, _ = tenant
    other = new_id()
    await pg_pool.execute("INSERT INTO tenants (id, name) VALUES ($1, 'globex')", other)
    listed, expiring, free = "+12125550143", "+12125550144", "+12125550145"
    await add_entry(pg_pool, listed, "internal", tid)  # acme's own list only
    await add_entry(pg_pool, expiring, "internal", None, expires_at=OPEN + timedelta(hours=1))
    chain = make_chain(guardrails={"checks": ["suppression"]})
    facts = chain.checks[0].facts
    sent = []
    fetch = facts.db.fetch

    async def counting(query, *args):
        sent.append(len(args[0]))
        return await fetch(query, *args)

    facts.db.fetch = counting
    cases = [
        (tid, listed, OPEN, "dnc_listed"),
        (other, listed, OPEN, None),  # another tenant's list
        (tid, expiring, OPEN, "dnc_listed"),
        (tid, expiring, OPEN + timedelta(hours=2), None),  # expired by then
        (tid, free, OPEN, None),
    ] * 8
    decisions = await asyncio.gather(
        *(
            chain.evaluate(action(t, to=to, purpose="transactional"), stage="accept", now=now)
            for t, to, now, _ in cases
        )
    )
    for (t, to, now, code), d in zip(cases, decisions, strict=True):
        if code is None:
            assert d.allowed, (t == tid, to, now, d.verdict)
        else:
            assert not d.allowed and d.verdict.code == code, (t == tid, to, now, d.verdict)
    assert sent and sum(sent) >= len(cases) - 1 and len(sent) < len(cases) // 4, sent
