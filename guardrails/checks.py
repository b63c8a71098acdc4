"""The chain's checks, in the order they decide:

1. `suppression` (PostgreSQL) — DNC lists and consumer opt-outs: `dnc_listed`, `opted_out`;
   for email the tenant's email suppression list: `email_suppressed` (a hard bounce or a
   complaint: every purpose), `opted_out` (an unsubscribe: marketing).
2. `content` (pure) — SMS/WhatsApp bodies against the content rules: `content_blocked`;
   marketing email against CAN-SPAM: `unsubscribe_link_required`, `postal_address_required`.
3. `rate_limits` (Redis) — tenant, API key, sender, destination and provider buckets plus the
   rules' frequency caps: `rate_limited`, `frequency_cap`. Accept stage only. (Email: no
   sender bucket — a sending number's carrier limit is not an address's — and no caps, which
   the rules define per telephone number.)
4. `calling_hours` (pure) — the recipient's local time: `outside_calling_hours` or a Defer.
   Not for email: calling-hour laws govern telephone calls and texts.

Round trips: everything the database knows about one action — its DNC and
opt-out rows (tenant and global), an email address's suppression rows (the subquery runs for
addresses only), the tenant's name (for its policy) and
whether the tenant ever sent marketing to this number — comes from ONE query
(`SuppressionFacts`), shared by the checks through `CheckContext.memo`. Every
bucket and cap is ONE Lua call, over the check's own pipelined Redis connection
(guardrails/resp.py); the query runs on a pool connection kept between evaluations
(guardrails/lease.py). The rate-limit check sends it from `start`, before the chain
awaits anything; the query follows at once (`prepare`), so an allowed action costs
about max(query, Lua call), not their sum, and no task is scheduled for it. (Until
this process has seen the tenant, its policy — which buckets apply — comes with the
query, and the Lua call waits for it.)

Tokens: the Lua call takes the tokens before the verdict is known; when the
decision is a Deny (DNC, content, calling hours with `when_closed=deny`, or an
error) the chain calls `release`, which gives them back in one more Lua call.
So a refused action costs nothing, and a deferred one is counted when it is
accepted (its frequency-cap slot and tokens are held for the send it will be).
Rate limits decide before calling hours: an over-limit request is refused with
429 even when it would only have been deferred.

Stages: the chain runs at accept and again at dispatch. Suppression, content
and calling hours run at both (an opt-out or DNC entry added while a message
waits in the queue stops it). Rate limits and frequency caps count once, at
accept, so a message is never charged twice.

The opt-out confirmation: an inbound STOP writes the opt-out row AND names, in
that row, the id of the one confirmation message it allows
(`confirmation_message_id`, see gateway/dnc/inbound.py). Suppression lets that
one message through the fresh opt-out — only if it is transactional and within
`optout_confirmation_window` of the opt-out — and calling hours treat it as the
reply it is. Nothing an API caller sends can carry that id: message ids are
minted by the server, and the row is written by the inbound path alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from gateway.core.actions import OutboundAction
from guardrails import ratelimit
from guardrails.calling_hours import check_calling_hours, frequency_caps_for, is_parsed
from guardrails.chain import Check, CheckContext
from guardrails.content import check_content
from guardrails.email_content import check_email_content
from guardrails.lease import LeasedConnection
from guardrails.policy import GuardrailPolicy, blocks
from guardrails.resp import ScriptPipe, Started
from guardrails.verdicts import Allow, Deny, DenyCode, Verdict

_CACHE_MAX = 100_000  # entries in a per-process cache before it starts again

_FACTS_HEAD = """
SELECT
    (SELECT name FROM tenants WHERE id = $2) AS tenant,
    (SELECT json_agg(json_build_object(
                'source', d.source, 'global', d.tenant_id IS NULL, 'expires_at', d.expires_at,
                'age_s', extract(epoch FROM now() - d.created_at),
                'confirmation_message_id', d.confirmation_message_id))
       FROM dnc_entries d
      WHERE d.number = $1 AND (d.tenant_id IS NULL OR d.tenant_id = $2)
        AND (d.expires_at IS NULL OR d.expires_at > $3)) AS entries,"""
_PRIOR_MARKETING = """
    CASE WHEN $4 THEN EXISTS (
        SELECT 1 FROM messages m
         WHERE m.tenant_id = $2 AND m.to_number = $1
           AND m.direction = 'outbound' AND m.purpose = 'marketing'
           AND m.status IN ('sent', 'delivered', 'undelivered')
           AND m.id::text <> $5) END AS prior_marketing,"""
_EMAIL_ENTRIES = """
    CASE WHEN strpos($1, '@') > 0 THEN (SELECT json_agg(json_build_object(
                'source', 'email_' || s.reason, 'age_s', extract(epoch FROM now() - s.created_at)))
       FROM email_suppressions s
      WHERE s.tenant_id = $2 AND s.address = lower($1)) END AS email_entries
"""
_FACTS_SQL = _FACTS_HEAD + _PRIOR_MARKETING + _EMAIL_ENTRIES  # everything, for any action
# The same query without the parts an action cannot use (same row, those columns NULL): a
# subquery that is never executed is still set up by the generic plan on every execution —
# for a telephone number the email one cost ~2.5 us of the ~35 us query (10 M list, 2-core
# box), the whole gap to a bare lookup being ~10 us. By (prior marketing wanted, an address).
_FACTS_SQLS = {
    (True, True): _FACTS_SQL,
    (True, False): _FACTS_HEAD + _PRIOR_MARKETING + "\n    NULL::json AS email_entries\n",
    (False, True): _FACTS_HEAD + "\n    NULL::boolean AS prior_marketing," + _EMAIL_ENTRIES,
    (False, False): _FACTS_HEAD
    + "\n    NULL::boolean AS prior_marketing,\n    NULL::json AS email_entries\n",
}


def _facts_query(args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """The query for one action's (to, tenant, at, wants prior marketing, subject), and its
    arguments: without the prior-marketing subquery, $4 and $5 are not in it."""
    to, wants = args[0], args[3]
    return _FACTS_SQLS[wants, "@" in to], args if wants else args[:3]


# The same facts for many actions at once: one row per action, in the order given.
_FACTS_BATCH_SQL = """
SELECT
    (SELECT name FROM tenants WHERE id = a.tenant) AS tenant,
    (SELECT json_agg(json_build_object(
                'source', d.source, 'global', d.tenant_id IS NULL, 'expires_at', d.expires_at,
                'age_s', extract(epoch FROM now() - d.created_at),
                'confirmation_message_id', d.confirmation_message_id))
       FROM dnc_entries d
      WHERE d.number = a.num AND (d.tenant_id IS NULL OR d.tenant_id = a.tenant)
        AND (d.expires_at IS NULL OR d.expires_at > a.at)) AS entries,
    CASE WHEN a.wants THEN EXISTS (
        SELECT 1 FROM messages m
         WHERE m.tenant_id = a.tenant AND m.to_number = a.num
           AND m.direction = 'outbound' AND m.purpose = 'marketing'
           AND m.status IN ('sent', 'delivered', 'undelivered')
           AND m.id::text <> a.subject) END AS prior_marketing,
    CASE WHEN strpos(a.num, '@') > 0 THEN (SELECT json_agg(json_build_object(
                'source', 'email_' || s.reason, 'age_s', extract(epoch FROM now() - s.created_at)))
       FROM email_suppressions s
      WHERE s.tenant_id = a.tenant AND s.address = lower(a.num)) END AS email_entries
FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::bool[], $5::text[])
     WITH ORDINALITY AS a(num, tenant, at, wants, subject, i)
ORDER BY a.i
"""
MAX_FACTS_BATCH = 256


class _FactsBatcher:
    """Concurrent evaluations' fact queries, sent as one: while a batch runs, the next one
    gathers (as the group commit does for writes), so under load one round trip answers
    many actions.

    At accept, a query that finds the kept connection free goes out at once on it, from its
    caller's task (`alone=True`): no task, no loop turn first (alone, the common case at low
    load, those were a third of the chain's loop turns). Queries arriving while it is on its
    way do not wait for it: they gather for one loop turn and go out as a batch on a pool
    connection beside it. (Waiting for the lone query first, as e24b018 did, made a dispatch
    batch's N concurrent checks two round trips in a row and the worker ~15 % slower.)
    The dispatch worker's checks always batch: they come as a wave (the jobs of one claim),
    and one of them answered ahead of the others went through the worker's later batched
    steps on its own — bench.dispatch: +15-45 % worker CPU per message."""

    def __init__(self, owner: SuppressionFacts) -> None:
        self.owner = owner  # its `lease` (one action alone: lease.py) and `db` (a batch)
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[asyncpg.Record]]] = []
        self._task: asyncio.Task[None] | None = None
        self._alone = False  # a lone query is on its way on the kept connection

    async def fetch(self, *args: Any, alone: bool = False) -> asyncpg.Record:
        if alone and not self._alone and not self._queue:
            self._alone = True
            try:
                sql, params = _facts_query(args)
                return await self.owner.lease.fetchrow(sql, *params)
            finally:
                self._alone = False
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[asyncpg.Record] = loop.create_future()
        self._queue.append((args, answer))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="suppression-facts")
        return await answer

    async def _drain(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # callers of this loop turn join the batch
            batch = self._queue[:MAX_FACTS_BATCH]
            del self._queue[:MAX_FACTS_BATCH]
            try:
                if len(batch) == 1:
                    sql, params = _facts_query(batch[0][0])
                    rows = [await self.owner.lease.fetchrow(sql, *params)]
                else:
                    columns = zip(*(args for args, _ in batch), strict=True)
                    rows = await self.owner.db.fetch(_FACTS_BATCH_SQL, *map(list, columns))
            except Exception as exc:
                _fail(batch, exc)
                continue
            except BaseException as exc:  # cancelled: nobody is left to answer them
                _fail(batch + self._queue, exc)
                self._queue.clear()
                raise
            for (_, answer), row in zip(batch, rows, strict=True):
                if not answer.done():
                    answer.set_result(row)


def _fail(batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, answer in batch:
        if not answer.done():
            answer.set_exception(exc)
            answer.exception()  # retrieved: a caller that gave up leaves no warning


@dataclass(frozen=True)
class Entry:
    source: str
    scope: str  # "tenant" | "global"
    expires_at: str | None
    age_s: float  # since the row was written, on the database's clock (which wrote it)
    confirmation_message_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "scope": self.scope, "expires_at": self.expires_at}


@dataclass(frozen=True)
class Facts:
    tenant: str | None
    entries: tuple[Entry, ...]
    prior_marketing: bool | None  # None: not asked (not a marketing SMS/WhatsApp)

    def confirmation_entry(self, action: OutboundAction, window_s: float) -> Entry | None:
        """The fresh opt-out whose one confirmation this action is, if it is.

        Its age is measured by the database that stamped it (DESIGN.md, principle 12), not
        by the chain's clock: a worker with a skewed (or a test's pinned) clock judges the
        window the same way."""
        if action.purpose != "transactional":
            return None
        for e in self.entries:
            if (
                e.source == "consumer_opt_out"
                and e.confirmation_message_id == action.subject
                and e.age_s <= window_s
            ):
                return e
        return None


class SuppressionFacts:
    """One query per evaluation for everything the database knows; memoised in the context."""

    def __init__(self, db: asyncpg.Pool, policy: GuardrailPolicy) -> None:
        self.db = db
        # The query runs on a connection kept while traffic is steady (guardrails/lease.py):
        # the pool's checkout would cost as much CPU as the query.
        self.lease = LeasedConnection(db)
        self.batcher = _FactsBatcher(self)
        self.policy = policy
        # Tenant names never change, so the rate-limit check can choose a tenant's buckets
        # without waiting for the query once this process has seen the tenant.
        self.tenant_names: dict[Any, str | None] = {}

    async def aclose(self) -> None:
        """Give the kept connection back to the pool (the pool is its owner's to close)."""
        await self.lease.aclose()

    def _wants_prior_marketing(self, action: OutboundAction) -> bool:
        return (
            "content" in self.policy.checks
            and action.purpose == "marketing"
            and not action.first_marketing_message
            and action.channel in self.policy.rules.content.channels
        )

    async def get(self, action: OutboundAction, ctx: CheckContext) -> Facts:
        found = ctx.memo.get("facts")
        if isinstance(found, Facts):
            return found
        if found is not None:  # another check of this evaluation is fetching them right now
            return await found
        pending: asyncio.Future[Facts] = asyncio.get_running_loop().create_future()
        ctx.memo["facts"] = pending
        try:
            facts = await self._load(action, ctx)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: whoever awaits it re-raises it
            raise
        pending.set_result(facts)
        ctx.memo["facts"] = facts
        return facts

    async def _load(self, action: OutboundAction, ctx: CheckContext) -> Facts:
        args = (
            action.to,
            action.tenant_id,
            ctx.now,
            self._wants_prior_marketing(action),
            action.subject,
        )
        if ctx.conn is not None:  # inside the caller's transaction: its own query
            sql, params = _facts_query(args)
            row = await ctx.conn.fetchrow(sql, *params)
        else:
            row = await self.batcher.fetch(*args, alone=ctx.stage == "accept")
        entries = tuple(
            Entry(
                source=e["source"],
                scope="global" if e["global"] else "tenant",
                expires_at=e["expires_at"],
                age_s=float(e["age_s"]),
                confirmation_message_id=e["confirmation_message_id"],
            )
            for e in (row["entries"] or ())
        ) + tuple(
            Entry(
                source=e["source"],
                scope="tenant",
                expires_at=None,
                age_s=float(e["age_s"]),
                confirmation_message_id=None,
            )
            for e in (row["email_entries"] or ())
        )
        facts = Facts(row["tenant"], entries, row["prior_marketing"])
        if len(self.tenant_names) > 100_000:
            self.tenant_names.clear()
        self.tenant_names[action.tenant_id] = row["tenant"]
        return facts


class SuppressionCheck:
    """DNC lists and consumer opt-outs (tenant and global), at both stages."""

    name = "suppression"

    def __init__(self, facts: SuppressionFacts, policy: GuardrailPolicy) -> None:
        self.facts = facts
        self.policy = policy

    async def prepare(self, action: OutboundAction, ctx: CheckContext) -> None:
        await self.facts.get(action, ctx)  # concurrently with the rate-limit call

    async def aclose(self) -> None:
        await self.facts.aclose()

    async def __call__(self, action: OutboundAction, ctx: CheckContext) -> Verdict:
        facts = await self.facts.get(action, ctx)
        inputs: dict[str, Any] = {
            "check": "suppression",
            "number": action.to,
            "purpose": action.purpose,
            "entries": [e.as_dict() for e in facts.entries],
        }
        exempt = facts.confirmation_entry(action, self.policy.confirmation_window)
        if exempt is not None:
            inputs["exempt"] = "opt-out confirmation: the one reply this opt-out allows"
        blocking = [
            e for e in facts.entries if e is not exempt and blocks(e.source, action.purpose)
        ]
        if not blocking:
            return Allow(inputs=inputs)
        inputs["blocked_by"] = [e.as_dict() for e in blocking]
        if action.channel == "email":
            return _email_denial(action, blocking, inputs)
        opted_out = [e for e in blocking if e.source == "consumer_opt_out"]
        if opted_out:
            return Deny(
                code=DenyCode.OPTED_OUT,
                reason=f"{action.to} has opted out of messages from this sender",
                rule=f"dnc.consumer_opt_out.{opted_out[0].scope}",
                inputs=inputs,
            )
        first = blocking[0]
        return Deny(
            code=DenyCode.DNC_LISTED,
            reason=f"{action.to} is on a do-not-contact list ({first.source}, {first.scope})",
            rule=f"dnc.{first.source}.{first.scope}",
            inputs=inputs,
        )


def _email_denial(action: OutboundAction, blocking: list[Entry], inputs: dict[str, Any]) -> Deny:
    """An address on the tenant's email suppression list: what put it there decides the code."""
    hard = [e for e in blocking if e.source in ("email_bounce", "email_complaint", "email_manual")]
    if hard:
        why = {
            "email_bounce": "bounced (hard bounce)",
            "email_complaint": "complained (marked as spam)",
            "email_manual": "was suppressed by you",
        }[hard[0].source]
        return Deny(
            code=DenyCode.EMAIL_SUPPRESSED,
            reason=f"{action.to} is on your email suppression list: it {why}",
            rule=f"email_suppression.{hard[0].source.removeprefix('email_')}",
            inputs=inputs,
        )
    return Deny(
        code=DenyCode.OPTED_OUT,
        reason=f"{action.to} has unsubscribed from your marketing email",
        rule="email_suppression.unsubscribe",
        inputs=inputs,
    )


class ContentCheck:
    """SMS/WhatsApp bodies against `[content]`; the first marketing message needs opt-out text.
    Marketing email against CAN-SPAM (guardrails/email_content.py)."""

    name = "content"

    def __init__(self, facts: SuppressionFacts, policy: GuardrailPolicy) -> None:
        self.facts = facts
        self.policy = policy

    async def aclose(self) -> None:
        await self.facts.aclose()

    async def __call__(self, action: OutboundAction, ctx: CheckContext) -> Verdict:
        rules = self.policy.rules
        if action.email is not None:
            return check_email_content(
                text=action.email.text,
                html=action.email.html,
                purpose=action.purpose,
                unsubscribe_url=action.email.unsubscribe_url,
                rules=self.policy.email,
            )
        if action.channel not in rules.content.channels or action.body is None:
            return Allow(
                inputs={"check": "content", "skipped": f"no body to scan on {action.channel}"}
            )
        if action.first_marketing_message:
            first, why = True, "set by the caller"
        elif action.purpose == "marketing":
            facts = await self.facts.get(action, ctx)
            first = not facts.prior_marketing
            why = "no earlier marketing message sent to this number" if first else "computed"
        else:
            first, why = False, "not marketing"
        verdict = check_content(
            action.body,
            channel=action.channel,
            purpose=action.purpose,
            rules=rules,
            first_marketing_message=first,
        )
        verdict.inputs["first_marketing_message_source"] = why
        return verdict


class CallingHoursCheck:
    """The pure calling-hours rules, with the tenant's transactional exemption, at both stages."""

    name = "calling_hours"

    def __init__(self, facts: SuppressionFacts, policy: GuardrailPolicy) -> None:
        self.facts = facts
        self.policy = policy

    async def aclose(self) -> None:
        await self.facts.aclose()

    async def __call__(self, action: OutboundAction, ctx: CheckContext) -> Verdict:
        if action.channel == "email":
            return Allow(
                inputs={"check": "calling_hours", "skipped": "calling hours do not apply to email"}
            )
        facts = await self.facts.get(action, ctx)
        if facts.confirmation_entry(action, self.policy.confirmation_window):
            return Allow(
                inputs={
                    "check": "calling_hours",
                    "exempt": "opt-out confirmation (a reply to the consumer's own message)",
                }
            )
        tenant_policy = self.policy.for_tenant(facts.tenant)
        try:
            return check_calling_hours(
                action.to,
                ctx.now,
                channel=action.channel,
                purpose=action.purpose,
                rules=self.policy.rules,
                address_state=action.address_state,
                exempt_transactional=tenant_policy.exempt_transactional_from_calling_hours,
                when_closed=ctx.when_closed,
            )
        except ValueError as exc:  # fail closed: an unplaceable number cannot be checked
            return Deny(
                code=DenyCode.OUTSIDE_CALLING_HOURS,
                reason=f"calling hours cannot be verified: {exc}",
                rule="calling_hours.invalid_recipient",
                inputs={"check": "calling_hours", "number": action.to, "error": str(exc)},
            )


class RateLimitCheck:
    """Every bucket and frequency cap in one Lua call; counted once, at accept."""

    name = "rate_limits"
    prepare_stages = ("accept",)  # counted once: the chain runs no `prepare` task at dispatch

    def __init__(
        self,
        redis: aioredis.Redis,
        facts: SuppressionFacts,
        policy: GuardrailPolicy,
        *,
        redis_slots: int = 32,
    ) -> None:
        self.redis = redis
        # The Lua calls go over one lean pipelined connection (guardrails/resp.py): redis-py's
        # own per-command overhead would be the largest cost of the whole chain.
        self.runner = ScriptPipe(redis)
        self.facts = facts
        self.policy = policy
        # redis-py's asyncio pool raises instead of waiting when it is out of connections:
        # a burst of concurrent sends queues here instead of failing (should the calls fall
        # back to it).
        self.slots = asyncio.Semaphore(redis_slots)
        # The buckets that do not depend on the recipient, by (tenant, key, sender, channel,
        # provider): built once, with their script arguments, not for every action.
        self._shared: dict[
            tuple[Any, ...], tuple[list[ratelimit.Bucket], list[ratelimit.Bucket]]
        ] = {}

    def buckets(self, action: OutboundAction, tenant: str | None) -> list[ratelimit.Bucket]:
        """Tenant, API key, sender, destination and provider buckets, in that order."""
        provider = action.extra.get("provider") or self.policy.channel_providers.get(action.channel)
        key = (action.tenant_id, tenant, action.key_id, action.from_, action.channel, provider)
        shared = self._shared.get(key)
        if shared is None:
            if len(self._shared) > _CACHE_MAX:
                self._shared.clear()
            shared = self._shared[key] = self._shared_buckets(action, tenant, provider)
        before, after = shared
        destination = ratelimit.Bucket(
            "destination",
            f"tl:rl:dest:{action.tenant_id}:{action.to}",
            **_rb(self.policy.limits.destination),
        )
        return [*before, destination, *after]

    def _shared_buckets(
        self, action: OutboundAction, tenant: str | None, provider: str | None
    ) -> tuple[list[ratelimit.Bucket], list[ratelimit.Bucket]]:
        """(the buckets before the destination's, the ones after it)."""
        p = self.policy
        before = [
            ratelimit.Bucket(
                "tenant",
                f"tl:rl:tenant:{action.tenant_id}",
                **_rb(p.tenant_limit(tenant, "tenant")),
            )
        ]
        if action.key_id:
            before.append(
                ratelimit.Bucket(
                    "api_key",
                    f"tl:rl:key:{action.key_id}",
                    **_rb(p.tenant_limit(tenant, "api_key")),
                )
            )
        if action.from_ and action.channel != "email":
            before.append(
                ratelimit.Bucket(
                    "sender", f"tl:rl:sender:{action.from_}", **_rb(p.sender_limit(action.from_))
                )
            )
        # Calls and messages of one provider account have separate throughput limits.
        kind = action.channel if action.channel in ("voice", "email") else "messaging"
        cps = p.limits.provider_cps.get(provider) if provider else None
        after = []
        if cps:
            after.append(
                ratelimit.Bucket(
                    f"provider_cps:{provider}",
                    f"tl:rl:provider:{provider}:{kind}",
                    rate=cps,
                    burst=max(1, int(cps)),
                )
            )
        return before, after

    def caps(self, action: OutboundAction, ctx: CheckContext) -> list[ratelimit.Cap]:
        if action.channel == "email":
            return []  # the rules' caps are per telephone number and state
        found = frequency_caps_for(
            action.to, action.address_state, action.channel, action.purpose, self.policy.rules
        )
        # "Same subject" cannot be told apart reliably, so every marketing action of the
        # tenant to the number counts against the cap (the conservative reading).
        return [
            ratelimit.Cap(
                c.rule,
                f"tl:fc:{action.tenant_id}:{action.to}:{c.rule}",
                max=c.max,
                window_s=c.window_hours * 3600.0,
            )
            for c in found
        ]

    def start(self, action: OutboundAction, ctx: CheckContext) -> bool:
        """Send the Lua call now, before the chain awaits anything, if nothing it needs is
        missing (the tenant's policy, an open connection); True if it did.

        The chain then awaits the database query while the call is on its way, and `prepare`
        only collects the reply: the two round trips overlap with no task in between.
        """
        if (
            ctx.stage != "accept"
            or action.tenant_id not in self.facts.tenant_names
            # A number not parsed yet costs ~40 µs (guardrails/calling_hours.py): that is
            # better spent in `prepare`, while the query is on its way.
            or (action.channel != "email" and not is_parsed(action.to))
        ):
            return False
        tenant = self.facts.tenant_names[action.tenant_id]
        buckets, caps = self.buckets(action, tenant), self.caps(action, ctx)
        sent = ratelimit.start_hit(self.runner, buckets, caps, member=action.subject)
        if sent is None:
            return False
        ctx.memo["limits"] = _Taking(buckets, caps, sent)
        return True

    async def prepare(self, action: OutboundAction, ctx: CheckContext) -> None:
        """Take the tokens now, concurrently with the database query; `release` gives them back."""
        if ctx.stage != "accept":
            return
        taking = ctx.memo.get("limits")
        if isinstance(taking, _Taking):  # sent by `start`: collect the reply
            reply = await taking.sent.result()
            ctx.memo["limits"] = (
                taking.buckets,
                taking.caps,
                ratelimit.outcome_of(reply, taking.buckets, taking.caps),
            )
            return
        if action.tenant_id in self.facts.tenant_names:
            tenant = self.facts.tenant_names[action.tenant_id]
        else:  # first sight of this tenant in this process: its policy comes with the query
            tenant = (await self.facts.get(action, ctx)).tenant
        buckets, caps = self.buckets(action, tenant), self.caps(action, ctx)
        async with self.slots:
            outcome = await ratelimit.hit(self.runner, buckets, caps, member=action.subject)
        ctx.memo["limits"] = (buckets, caps, outcome)

    async def release(self, action: OutboundAction, ctx: CheckContext) -> None:
        taken = ctx.memo.pop("limits", None)
        if isinstance(taken, _Taking):  # refused before the reply was read: read it now
            try:
                reply = await taken.sent.result()
            except Exception:  # the call failed: it took nothing
                return
            taken = (
                taken.buckets,
                taken.caps,
                ratelimit.outcome_of(reply, taken.buckets, taken.caps),
            )
        if taken is not None and taken[2].admitted:
            buckets, caps, _ = taken
            async with self.slots:
                await ratelimit.refund(self.runner, buckets, caps, member=action.subject)

    async def aclose(self) -> None:
        """Close the check's own Redis connection (the client is its owner's to close)."""
        await self.runner.aclose()
        await self.facts.aclose()

    async def __call__(self, action: OutboundAction, ctx: CheckContext) -> Verdict:
        if ctx.stage != "accept":
            return Allow(inputs={"check": "rate_limits", "skipped": "counted once, at accept"})
        if not isinstance(ctx.memo.get("limits"), tuple):  # not prepared (or only started)
            await self.prepare(action, ctx)
        outcome = ctx.memo["limits"][2]
        inputs: dict[str, Any] = {
            "check": "rate_limits",
            "at_us": outcome.at_us,
            "buckets": outcome.buckets,
            "caps": outcome.caps,
        }
        if outcome.admitted:
            return Allow(inputs=inputs)
        inputs["retry_after_s"] = round(max(outcome.retry_after_s, 0.001), 3)
        if outcome.denied_caps:
            cap = outcome.denied_caps[0]
            return Deny(
                code=DenyCode.FREQUENCY_CAP,
                reason=(
                    f"{action.to} already had {cap['count']} of at most {cap['max']} such "
                    f"contacts in {cap['window_s'] / 3600:g} h ({cap['cap']})"
                ),
                rule=f"frequency_cap.{cap['cap']}",
                inputs=inputs,
            )
        bucket = outcome.denied_buckets[0]
        return Deny(
            code=DenyCode.RATE_LIMITED,
            reason=(
                f"rate limit {bucket['limit']} ({bucket['rate']:g}/s, burst {bucket['burst']}) "
                f"reached; retry in {inputs['retry_after_s']:g} s"
            ),
            rule=f"rate_limit.{bucket['limit']}",
            inputs=inputs,
        )


@dataclass(frozen=True, slots=True)
class _Taking:
    """A rate-limit call on its way (see `RateLimitCheck.start`)."""

    buckets: list[ratelimit.Bucket]
    caps: list[ratelimit.Cap]
    sent: Started


def _rb(limit: Any) -> dict[str, Any]:
    return {"rate": limit.rate, "burst": limit.burst}


def build_checks(
    policy: GuardrailPolicy, db: asyncpg.Pool, redis: aioredis.Redis, *, redis_slots: int = 32
) -> list[Check]:
    """The enabled checks in the chain's fixed order (`redis_slots`: concurrent Lua calls)."""
    facts = SuppressionFacts(db, policy)
    available: dict[str, Check] = {
        "suppression": SuppressionCheck(facts, policy),
        "content": ContentCheck(facts, policy),
        "rate_limits": RateLimitCheck(redis, facts, policy, redis_slots=redis_slots),
        "calling_hours": CallingHoursCheck(facts, policy),
    }
    return [available[name] for name in policy.checks]
