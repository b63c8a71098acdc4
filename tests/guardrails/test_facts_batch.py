"""Issue 14: concurrent evaluations share one suppression query, each action getting its own
facts (its number, its tenant, its clock), as the one-action query gives them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from gateway.core.ids import new_id
from guardrails.checks import _FACTS_SQL, _facts_query
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


async def test_a_lone_query_goes_out_at_once_and_concurrent_ones_do_not_wait_for_it(
    make_chain, tenant, pg_pool
):
    """At accept, alone, the query leaves from its caller's task (no batch task); queries
    arriving while it is on its way go out as a batch beside it, not after it. The dispatch
    worker's checks always batch (a claim's jobs come as a wave, kept together)."""
    tid, _ = tenant
    await add_entry(pg_pool, "+12125550143", "internal", tid)
    chain = make_chain(guardrails={"checks": ["suppression"]})
    batcher = chain.checks[0].facts.batcher

    def evaluate(to: str):
        return chain.evaluate(action(tid, to=to, purpose="transactional"), stage="accept", now=OPEN)

    assert (await evaluate("+12125550145")).allowed
    assert batcher._task is None  # alone: no task was needed
    lease = chain.checks[0].facts.lease
    gate, fetchrow = asyncio.Event(), lease.fetchrow

    async def held(query, *args):
        await gate.wait()
        return await fetchrow(query, *args)

    lease.fetchrow = held
    lone = asyncio.create_task(evaluate("+12125550146"))
    await asyncio.sleep(0)  # on its way, held
    others = [("+12125550143", False), ("+12125550147", True), ("+12125550148", True)]
    decisions = await asyncio.wait_for(
        asyncio.gather(*(evaluate(to) for to, _ in others)), timeout=10
    )
    assert [d.allowed for d in decisions] == [allowed for _, allowed in others]
    assert not lone.done()  # the batch did not wait for the lone query
    gate.set()
    assert (await lone).allowed
    lease.fetchrow = fetchrow
    before = batcher._task
    d = await chain.evaluate(
        action(tid, to="+12125550149", purpose="transactional"), stage="dispatch", now=OPEN
    )
    assert d.allowed and batcher._task not in (None, before)  # through a batch task


async def test_each_form_of_the_one_action_query_answers_as_the_full_one(tenant, pg_pool):
    """The query leaves out what an action cannot use (prior marketing when not asked, email
    suppressions for a telephone number): what it answers is the full query's answer."""
    tid, _ = tenant
    number, address = "+12125550143", "pat@example.com"
    await add_entry(pg_pool, number, "internal", tid)
    await pg_pool.execute(
        "INSERT INTO messages (id, tenant_id, direction, channel, to_number, body, purpose, "
        "status, encoding, segments, trace_id) VALUES ($1, $2, 'outbound', 'sms', $3, 'Hi', "
        "'marketing', 'delivered', 'GSM-7', 1, 't')",
        new_id(),
        tid,
        number,
    )
    await pg_pool.execute(
        "INSERT INTO email_suppressions (tenant_id, address, reason, origin) "
        "VALUES ($1, $2, 'bounce', 'api')",
        tid,
        address,
    )
    seen, rows = set(), {}
    for to in (number, address, "+12125550144"):
        for wants in (True, False):
            args = (to, tid, OPEN, wants, "x")
            sql, params = _facts_query(args)
            seen.add(sql)
            rows[to, wants] = row = _timeless(await pg_pool.fetchrow(sql, *params))
            assert row == _timeless(await pg_pool.fetchrow(_FACTS_SQL, *args)), (to, wants)
    assert len(seen) == 4
    # (what is there is seen)
    assert rows[number, True]["prior_marketing"] is True and rows[number, True]["entries"]
    assert rows[number, False]["prior_marketing"] is None
    assert rows[address, True]["email_entries"] and rows[address, False]["email_entries"]


def _timeless(row) -> dict:
    """A facts row without the rows' ages (now() moves between two queries)."""
    out = dict(row)
    for column in ("entries", "email_entries"):
        if out[column] is not None:
            out[column] = [{k: v for k, v in e.items() if k != "age_s"} for e in out[column]]
    return out
