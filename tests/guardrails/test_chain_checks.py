"""The real chain (suppression → content → calling hours → rate limits) on real PostgreSQL and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway import db
from gateway.core.ids import new_id
from guardrails import ratelimit
from guardrails.lease import LeasedConnection
from guardrails.verdicts import Defer, Deny
from tests.guardrails.conftest import OPT_OUT_LINE, action

# Tuesday 2026-11-24 17:00 UTC = 12:00 in New York, 09:00 in Los Angeles: open everywhere.
OPEN = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
NY = "+12125550143"


async def add_entry(pg_pool, number, source, tenant_id=None, **kw):
    await pg_pool.execute(
        "INSERT INTO dnc_entries (number, tenant_id, source, expires_at, confirmation_message_id, created_at) "
        "VALUES ($1, $2, $3, $4, $5, coalesce($6, now()))",
        number,
        tenant_id,
        source,
        kw.get("expires_at"),
        kw.get("confirmation_message_id"),
        kw.get("created_at"),
    )


SOURCES = [
    ("internal", "tenant", "marketing", "dnc_listed"),
    ("internal", "tenant", "transactional", "dnc_listed"),
    ("litigator", "global", "transactional", "dnc_listed"),
    ("consumer_opt_out", "tenant", "transactional", "opted_out"),
    ("consumer_opt_out", "global", "marketing", "opted_out"),
    ("national_registry", "global", "marketing", "dnc_listed"),
    ("national_registry", "global", "transactional", None),
    ("state_registry", "tenant", "marketing", "dnc_listed"),
    ("state_registry", "tenant", "transactional", None),
]


async def test_dnc_sources_block_the_purposes_they_cover(make_chain, tenant, pg_pool):
    tid, _ = tenant
    chain = make_chain(guardrails={"checks": ["suppression"]})
    for source, scope, purpose, code in SOURCES:
        await pg_pool.execute("DELETE FROM dnc_entries")
        await add_entry(pg_pool, NY, source, tid if scope == "tenant" else None)
        for stage in ("accept", "dispatch"):
            decision = await chain.evaluate(action(tid, purpose=purpose), stage=stage, now=OPEN)
            case = (source, scope, purpose, stage)
            if code is None:
                assert decision.allowed, (case, decision.verdict)
                assert decision.cleared is not None
                # what was seen is recorded even when it does not block
                assert decision.event.data["inputs"]["suppression"]["entries"] == [
                    {"source": source, "scope": scope, "expires_at": None}
                ]
                continue
            assert isinstance(decision.verdict, Deny), case
            assert decision.verdict.code == code and decision.cleared is None, case
            assert decision.event.type == "guardrail.deny"
            data = decision.event.data
            assert data["code"] == code and data["stage"] == stage
            assert data["rule"] == f"dnc.{source}.{scope}"
            assert data["inputs"]["blocked_by"] == [
                {"source": source, "scope": scope, "expires_at": None}
            ]
            assert data["action"]["to"] == NY and data["action"]["purpose"] == purpose


async def test_expired_entries_and_other_tenants_entries_do_not_apply(make_chain, tenant, pg_pool):
    tid, _ = tenant
    other = new_id()
    await pg_pool.execute("INSERT INTO tenants (id, name) VALUES ($1, 'other')", other)
    await add_entry(pg_pool, NY, "internal", other)
    await add_entry(pg_pool, NY, "litigator", None, expires_at=OPEN - timedelta(seconds=1))
    chain = make_chain(guardrails={"checks": ["suppression"]})
    assert (await chain.evaluate(action(tid), stage="accept", now=OPEN)).allowed
    # the same litigator entry, not yet expired at an earlier instant
    earlier = await chain.evaluate(action(tid), stage="accept", now=OPEN - timedelta(minutes=1))
    assert isinstance(earlier.verdict, Deny) and earlier.verdict.code == "dnc_listed"


async def test_only_the_linked_confirmation_passes_a_fresh_opt_out(make_chain, tenant, pg_pool):
    tid, _ = tenant
    confirmation = new_id()
    await add_entry(
        pg_pool,
        NY,
        "consumer_opt_out",
        tid,
        confirmation_message_id=confirmation,
        created_at=datetime.now(UTC) - timedelta(seconds=30),
    )
    # A tenant that opted its transactional traffic in to calling hours: only the
    # confirmation goes out at night.
    chain = make_chain(
        guardrails={
            "checks": ["suppression", "calling_hours"],
            "policy": {"exempt_transactional_from_calling_hours": False},
        }
    )
    night = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)  # 23:00 in New York: closed
    # The window is measured by the database that stamped the opt-out, whatever the chain's
    # clock says (here: a night months away from the row's time).
    now = night

    def confirm(**kw):
        return action(tid, subject=str(confirmation), purpose="transactional", **kw)

    ok = await chain.evaluate(confirm(), stage="dispatch", now=now)
    assert ok.allowed, ok.verdict
    inputs = ok.event.data["inputs"]
    assert "opt-out confirmation" in inputs["suppression"]["exempt"]
    assert "opt-out confirmation" in inputs["calling_hours"]["exempt"]
    # Any other message, a marketing one with that id, or the confirmation too late: opted_out.
    for act in [action(tid, purpose="transactional"), action(tid, subject=str(confirmation))]:
        d = await chain.evaluate(act, stage="dispatch", now=now)
        assert isinstance(d.verdict, Deny) and d.verdict.code == "opted_out", act
    await pg_pool.execute("UPDATE dnc_entries SET created_at = now() - interval '301 seconds'")
    d = await chain.evaluate(confirm(), stage="dispatch", now=now)
    assert isinstance(d.verdict, Deny) and d.verdict.code == "opted_out", "too late"
    # Not open at night for anything else, either:
    d = await chain.evaluate(
        action(tid, to="+12125550100", purpose="transactional"), stage="dispatch", now=night
    )
    assert isinstance(d.verdict, Defer)


async def test_first_marketing_message_needs_opt_out_language(make_chain, tenant, pg_pool):
    tid, _ = tenant
    chain = make_chain(guardrails={"checks": ["suppression", "content"]})
    bare = action(tid, body="Big sale today!")
    d = await chain.evaluate(bare, stage="accept", now=OPEN)
    assert isinstance(d.verdict, Deny) and d.verdict.code == "content_blocked"
    assert d.verdict.rule == "content.opt_out_language"
    assert d.event.data["inputs"]["first_marketing_message"] is True
    assert (await chain.evaluate(action(tid), stage="accept", now=OPEN)).allowed
    # Transactional messages never need it.
    assert (
        await chain.evaluate(
            action(tid, body="Your code is 1234", purpose="transactional"), stage="accept", now=OPEN
        )
    ).allowed

    # Once a marketing message to the number has gone out, later ones may omit it...
    await pg_pool.execute(
        "INSERT INTO messages (id, tenant_id, direction, channel, to_number, body, purpose, status, "
        "encoding, segments, trace_id) VALUES ($1, $2, 'outbound', 'sms', $3, $4, 'marketing', "
        "'delivered', 'GSM-7', 1, 't')",
        new_id(),
        tid,
        NY,
        f"Hello. {OPT_OUT_LINE}",
    )
    d = await chain.evaluate(bare, stage="accept", now=OPEN)
    assert d.allowed, d.verdict
    assert d.event.data["inputs"]["content"]["first_marketing_message"] is False
    # ...unless the caller says it is a first message (e.g. a new campaign's first touch).
    flagged = action(tid, body="Big sale today!", first_marketing_message=True)
    d = await chain.evaluate(flagged, stage="accept", now=OPEN)
    assert (
        isinstance(d.verdict, Deny)
        and d.event.data["inputs"]["first_marketing_message_source"] == "set by the caller"
    )
    # Other content rules apply to everyone.
    d = await chain.evaluate(
        action(tid, body=f"Cheap cigarettes! {OPT_OUT_LINE}"), stage="accept", now=OPEN
    )
    assert isinstance(d.verdict, Deny) and d.verdict.rule == "content.shaft.tobacco"
    voice = action(tid, channel="voice", body=None)
    assert (await chain.evaluate(voice, stage="accept", now=OPEN)).allowed


# (number, clock, purpose, when_closed, exempt policy) -> ("allow" | "deny" | defer instant)
HOURS = [
    (NY, OPEN, "marketing", "defer", False, "allow"),
    (NY, datetime(2026, 11, 24, 12, 0, tzinfo=UTC), "marketing", "defer", False,
     datetime(2026, 11, 24, 13, 0, tzinfo=UTC)),  # 07:00 ET -> 08:00 ET
    (NY, datetime(2026, 11, 24, 12, 0, tzinfo=UTC), "marketing", "deny", False, "deny"),
    (NY, datetime(2026, 11, 24, 12, 0, tzinfo=UTC), "transactional", "defer", False,
     datetime(2026, 11, 24, 13, 0, tzinfo=UTC)),
    (NY, datetime(2026, 11, 24, 12, 0, tzinfo=UTC), "transactional", "deny", True, "allow"),
    (NY, datetime(2026, 11, 24, 12, 0, tzinfo=UTC), "marketing", "deny", True, "deny"),
    # Florida closes at 20:00: 20:30 ET is open federally but not in FL
    ("+13055550143", datetime(2026, 11, 25, 1, 30, tzinfo=UTC), "marketing", "defer", False,
     datetime(2026, 11, 25, 13, 0, tzinfo=UTC)),
    # Alabama: closed on Sundays; Sunday noon CT -> Monday 08:00 CT
    ("+12055550143", datetime(2026, 11, 29, 18, 0, tzinfo=UTC), "marketing", "defer", False,
     datetime(2026, 11, 30, 14, 0, tzinfo=UTC)),
    # Thanksgiving 2026 (Thu 26 Nov) is an Alabama holiday too
    ("+12055550143", datetime(2026, 11, 26, 18, 0, tzinfo=UTC), "marketing", "deny", False, "deny"),
]  # fmt: skip


async def test_calling_hours_through_the_chain_at_fixed_clock_times(make_chain, tenant):
    tid, _ = tenant
    chains = {
        exempt: make_chain(
            guardrails={
                "checks": ["suppression", "calling_hours"],
                "tenants": {"acme": {"exempt_transactional_from_calling_hours": exempt}},
            }
        )
        for exempt in (False, True)
    }
    for to, now, purpose, when_closed, exempt, expected in HOURS:
        chain = chains[exempt]
        chain.clock = lambda now=now: now  # the injected clock
        for stage in ("accept", "dispatch"):
            d = await chain.evaluate(
                action(tid, to=to, purpose=purpose), stage=stage, when_closed=when_closed
            )
            case = (to, now, purpose, when_closed, exempt, stage)
            if expected == "allow":
                assert d.allowed, (case, d.verdict)
            elif expected == "deny":
                assert isinstance(d.verdict, Deny), case
                assert d.verdict.code == "outside_calling_hours"
                assert d.event.data["inputs"]["closed_by"]
            else:
                assert isinstance(d.verdict, Defer), (case, d.verdict)
                assert d.verdict.until == expected, case
                assert d.event.type == "guardrail.defer"
                assert d.event.data["until"] == expected.isoformat()


async def test_rate_limits_count_once_at_accept_and_say_when_to_retry(make_chain, tenant):
    tid, _ = tenant
    chain = make_chain(
        guardrails={
            "checks": ["rate_limits"],
            "rate_limits": {"destination": {"rate": 0.5, "burst": 2}},
        }
    )
    first, second, third = (action(tid) for _ in range(3))
    assert (await chain.evaluate(first, stage="accept")).allowed
    assert (await chain.evaluate(second, stage="accept")).allowed
    # dispatch does not charge again
    for _ in range(5):
        d = await chain.evaluate(first, stage="dispatch")
        assert d.allowed and d.event.data["inputs"]["rate_limits"]["skipped"]
    d = await chain.evaluate(third, stage="accept")
    assert isinstance(d.verdict, Deny) and d.verdict.code == "rate_limited"
    assert d.verdict.rule == "rate_limit.destination"
    assert 0 < d.verdict.inputs["retry_after_s"] <= 2.0
    buckets = {b["limit"]: b for b in d.verdict.inputs["buckets"]}
    assert buckets["destination"]["ok"] is False and buckets["tenant"]["ok"] is True
    # All-or-nothing: the refused action took nothing from the tenant bucket.
    assert buckets["tenant"]["remaining"] == 100 - 2
    # Another destination is fine.
    assert (await chain.evaluate(action(tid, to="+12125550199"), stage="accept")).allowed


async def test_sender_and_provider_buckets(make_chain, tenant):
    tid, _ = tenant
    chain = make_chain(
        guardrails={
            "checks": ["rate_limits"],
            "rate_limits": {
                "sender": {"rate": 1.0, "burst": 1},
                "senders": {"+18005550100": {"rate": 3.0, "burst": 3}},
                "provider_cps": {"sandbox": 2.0},
            },
        }
    )
    long_code = "+12125550100"
    assert (await chain.evaluate(action(tid, from_=long_code), stage="accept")).allowed
    d = await chain.evaluate(action(tid, from_=long_code, to="+12125550101"), stage="accept")
    assert isinstance(d.verdict, Deny) and d.verdict.rule == "rate_limit.sender"
    # provider CPS (2/s) is shared: a second sender gets one more through, then the provider is full
    d = await chain.evaluate(action(tid, from_="+18005550100", to="+12125550102"), stage="accept")
    assert d.allowed
    d = await chain.evaluate(action(tid, from_="+18005550100", to="+12125550103"), stage="accept")
    assert isinstance(d.verdict, Deny) and d.verdict.rule == "rate_limit.provider_cps:sandbox"


async def test_frequency_cap_from_the_rules_file(make_chain, tenant):
    """Florida: at most 3 marketing contacts per number per 24 h; other states are not capped."""
    tid, _ = tenant
    chain = make_chain(
        guardrails={
            "checks": ["rate_limits"],
            "rate_limits": {"destination": {"rate": 100.0, "burst": 100}},
        }
    )
    fl = "+13055550143"
    for _ in range(3):
        assert (await chain.evaluate(action(tid, to=fl), stage="accept")).allowed
    d = await chain.evaluate(action(tid, to=fl), stage="accept")
    assert isinstance(d.verdict, Deny) and d.verdict.code == "frequency_cap"
    assert d.verdict.rule == "frequency_cap.fl.501.616.6"
    assert 86000 < d.verdict.inputs["retry_after_s"] <= 86400
    # transactional messages and other states are not capped
    assert (
        await chain.evaluate(action(tid, to=fl, purpose="transactional"), stage="accept")
    ).allowed
    for _ in range(5):
        assert (await chain.evaluate(action(tid, to=NY), stage="accept")).allowed


async def test_one_query_and_one_redis_call_per_evaluation(
    make_chain, tenant, pg_pool, redis_client
):
    tid, _ = tenant
    chain = make_chain()
    facts = chain.checks[0].facts
    calls = {"pg": 0, "redis": 0}
    query = facts.lease.fetchrow  # the pool's connection, or the one the chain keeps

    async def counting_query(*args):
        calls["pg"] += 1
        return await query(*args)

    facts.lease.fetchrow = counting_query
    limits = chain.checks[2]
    # A Redis round trip is an EVALSHA, whichever connection carries it: the client's, or the
    # lean pipelined one the check uses (guardrails/resp.py), which must be the one used.
    real, lean = redis_client.evalsha, limits.runner._write

    async def counting(*args):
        calls["redis"] += 1
        calls["client"] = calls.get("client", 0) + 1
        return await real(*args)

    def counting_lean(*args):
        calls["redis"] += 1
        return lean(*args)

    limits.redis.evalsha = counting
    limits.runner._write = counting_lean
    await limits.redis.script_load(ratelimit.SCRIPT.source)
    await limits.redis.script_load(ratelimit.REFUND.source)
    # the first sight of a tenant: still one query (the rate-limit call waits for its policy)
    d = await chain.evaluate(action(tid), stage="accept", now=OPEN)
    assert d.allowed, d.verdict
    assert d.event.data["checks"] == ["suppression", "content", "rate_limits", "calling_hours"]
    assert calls == {"pg": 1, "redis": 1}
    calls.update(pg=0, redis=0)
    d = await chain.evaluate(action(tid), stage="accept", now=OPEN)
    assert d.allowed and calls == {"pg": 1, "redis": 1}
    calls.update(pg=0, redis=0)
    d = await chain.evaluate(action(tid, body="Hi there!"), stage="accept", now=OPEN)
    assert isinstance(d.verdict, Deny)  # content: the tokens taken are given back
    assert calls == {"pg": 1, "redis": 2}
    calls.update(pg=0, redis=0)
    d = await chain.evaluate(action(tid), stage="dispatch", now=OPEN)
    assert d.allowed and calls == {"pg": 1, "redis": 0}


async def test_a_refused_action_gives_its_tokens_back_and_a_deferred_one_keeps_them(
    make_chain, tenant, pg_pool
):
    tid, _ = tenant
    # A bucket that refills no token while the test runs (at the default 50/s one comes back
    # every 20 ms, and a slow step on a loaded machine read 99 where the test meant 98).
    slow = {"rate_limits": {"tenant": {"rate": 0.001, "burst": 100}}}
    chain = make_chain(guardrails=slow)
    limits = chain.checks[2]

    async def tenant_tokens() -> int:
        bucket = limits.buckets(action(tid), "acme")[0]
        peek = await ratelimit.hit(limits.redis, [bucket], member="peek", dry_run=True)
        return peek.buckets[0]["remaining"]

    assert await tenant_tokens() == 100
    await add_entry(pg_pool, "+12125550177", "internal", tid)
    early = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 07:00 in New York
    refused = [
        (action(tid, to="+12125550177"), OPEN, "defer"),  # DNC
        (action(tid, body="no opt-out text"), OPEN, "defer"),  # content
        (action(tid, to="+12125550178"), early, "deny"),  # calling hours, deny
    ]
    for act, now, when_closed in refused:
        d = await chain.evaluate(act, stage="accept", now=now, when_closed=when_closed)
        assert isinstance(d.verdict, Deny), d.verdict
    assert await tenant_tokens() == 100
    d = await chain.evaluate(action(tid, to="+12125550179"), stage="accept", now=early)
    assert isinstance(d.verdict, Defer)
    assert await tenant_tokens() == 99  # held for the deferred send
    d = await chain.evaluate(action(tid, to="+12125550180"), stage="accept", now=OPEN)
    assert d.allowed and await tenant_tokens() == 98
    # a Florida marketing number: the refused 4th contact does not take a cap slot either
    fl_chain = make_chain(guardrails={"checks": ["rate_limits"], **slow})
    fl = "+13055550143"
    for _ in range(3):
        assert (await fl_chain.evaluate(action(tid, to=fl), stage="accept")).allowed
    for _ in range(2):
        d = await fl_chain.evaluate(action(tid, to=fl), stage="accept")
        assert d.verdict.code == "frequency_cap"
    cap_key = fl_chain.checks[0].caps(action(tid, to=fl), type("C", (), {"memo": {}})())[0].key
    assert await limits.redis.zcard(cap_key) == 3


async def test_tokens_already_on_their_way_when_the_query_fails_are_given_back(
    make_chain, tenant, database_url
):
    """The Lua call leaves before the database query (`start`); a query that fails refunds it."""
    tid, _ = tenant
    # (a bucket that does not refill while the test runs)
    chain = make_chain(guardrails={"rate_limits": {"tenant": {"rate": 0.001, "burst": 100}}})
    limits = chain.checks[2]

    async def tenant_tokens() -> int:
        bucket = limits.buckets(action(tid), "acme")[0]
        peek = await ratelimit.hit(limits.redis, [bucket], member="peek", dry_run=True)
        return peek.buckets[0]["remaining"]

    assert (await chain.evaluate(action(tid), stage="accept", now=OPEN)).allowed
    assert await tenant_tokens() == 99
    closed = await db.create_pool(database_url, min_size=1, max_size=1)
    await closed.close()
    facts = chain.checks[0].facts
    await facts.aclose()
    facts.lease = LeasedConnection(closed)
    sent, write = [], limits.runner._write

    def counting(*args):
        sent.append(args)
        return write(*args)

    limits.runner._write = counting
    with pytest.raises(asyncpg.InterfaceError):
        await chain.evaluate(action(tid), stage="accept", now=OPEN)
    # the hit, sent before the query was tried, then its refund (loaded on first use, so the
    # refund may be sent twice)
    assert ratelimit.SCRIPT.sha.encode() in sent[0][1]
    assert all(ratelimit.REFUND.sha.encode() in command for _, command in sent[1:]) and sent[1:]
    assert await tenant_tokens() == 99
