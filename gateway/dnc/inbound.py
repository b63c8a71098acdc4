"""Inbound keywords: STOP (and probable revocations), START, HELP — inside the storing transaction.

47 CFR 64.1200(a)(10): a revocation takes effect at once and may be answered
by ONE confirmation text with no marketing in it. What this hook does, in the
same transaction that stores the inbound message (so neither happens alone):

* opt-out (certain or probable, `guardrails/optout.py`): insert the tenant's
  `consumer_opt_out` entry for the sender's number — effective for every later
  send and for everything already queued, because dispatch runs the chain again
  — and, if the number was not already opted out, queue the one confirmation.
  The confirmation's message id is written INTO the opt-out row
  (`confirmation_message_id`). The suppression check lets exactly that message
  through the fresh opt-out (transactional, within
  `guardrails.optout_confirmation_window` of the opt-out); any other message,
  including a second confirmation, is refused with `opted_out`. A repeated STOP
  finds the row already there and queues nothing.
* opt-in (START/UNSTOP/YES): delete the tenant's opt-out row for the number;
  if there was one, queue the tenant's `optin_text`.
* help (HELP/INFO): queue the tenant's `help_text`.

Replies are queued, not sent: a `messages` row (transactional, from the DID
that received the keyword, same trace id) plus a dispatch job, so they leave
through the one pipeline and the guardrail chain decides at dispatch like for
any message. They skip the accept stage on purpose: the chain reads the
database on its own connection, which cannot see this uncommitted transaction
(it would miss the fresh opt-out), and replies are neither rate-limited API
traffic nor free text (the texts pass the content rules at start-up,
`GuardrailPolicy.from_settings`).
"""

from __future__ import annotations

import uuid

import asyncpg

from gateway import queue
from gateway.core.ids import new_id
from gateway.core.segments import count_segments
from gateway.events.outbox import NewEvent, emit
from gateway.messages import repo as messages_repo
from gateway.messages.inbound import InboundMessage
from gateway.pipeline.accept import DISPATCH_QUEUE
from guardrails.optout import Intent, classify_with_rules
from guardrails.policy import GuardrailPolicy

_CHANNELS = ("sms", "whatsapp")
_state: dict[str, object] = {}


def configure(policy: GuardrailPolicy, *, max_attempts: int) -> None:
    """Set the policy the hook applies (done by the app factory's `build_chain`)."""
    _state["policy"] = policy
    _state["max_attempts"] = max_attempts


def _policy() -> GuardrailPolicy:
    policy = _state.get("policy")
    if policy is None:  # not wired by an app (a script calling receive()): the defaults
        from gateway.settings import Settings

        policy = GuardrailPolicy.from_settings(Settings())
        _state["policy"] = policy
    assert isinstance(policy, GuardrailPolicy)
    return policy


_OPT_OUT_SQL = """
INSERT INTO dnc_entries (number, tenant_id, source, origin, note, confirmation_message_id)
VALUES ($1, $2, 'consumer_opt_out', $3, $4, $5)
ON CONFLICT (number, source, tenant_id) DO UPDATE
    SET expires_at = NULL,
        created_at = CASE WHEN dnc_entries.expires_at <= now() THEN now()
                          ELSE dnc_entries.created_at END,
        origin = CASE WHEN dnc_entries.expires_at <= now() THEN EXCLUDED.origin
                      ELSE dnc_entries.origin END,
        confirmation_message_id = CASE WHEN dnc_entries.expires_at <= now()
                                       THEN EXCLUDED.confirmation_message_id
                                       ELSE dnc_entries.confirmation_message_id END
    WHERE dnc_entries.expires_at IS NOT NULL
RETURNING confirmation_message_id
"""


async def keyword_hook(conn: asyncpg.Connection, msg: InboundMessage) -> None:
    """The `InboundHook` registered by the app: opt-out, opt-in and help keywords."""
    if msg.channel not in _CHANNELS:
        return
    policy = _policy()
    match = classify_with_rules(msg.body, policy.rules.optout)
    if match.intent == Intent.NONE:
        return
    tenant = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", msg.tenant_id)
    tenant_policy = policy.for_tenant(tenant)
    data = {
        "number": msg.from_number,
        "did": msg.to_number,
        "intent": str(match.intent),
        "keyword": match.keyword,
        "reason": match.reason,
        "inbound_message_id": str(msg.message_id),
    }
    if match.is_opt_out:
        reply_id = new_id()
        # New, or renewing an expired one: the row names this reply as its confirmation.
        # An active opt-out (a repeated STOP) gets no second confirmation; one that was set
        # to expire becomes permanent (a consumer's revocation does not lapse).
        linked = await conn.fetchval(
            _OPT_OUT_SQL,
            msg.from_number,
            msg.tenant_id,
            f"inbound:{msg.message_id}",
            f"{match.intent}: {match.reason}"[:500],
            reply_id,
        )
        recorded = linked == reply_id
        await emit(
            conn,
            NewEvent(
                msg.tenant_id,
                "optout.recorded" if recorded else "optout.repeated",
                str(msg.message_id),
                msg.trace_id,
                data | {"confirmation_message_id": str(reply_id) if recorded else None},
            ),
        )
        if recorded:
            await _queue_reply(
                conn, msg, reply_id, tenant_policy.optout_text, "optout_confirmation"
            )
    elif match.intent == Intent.OPT_IN:
        removed = await conn.fetchval(
            """
            WITH gone AS (
                DELETE FROM dnc_entries
                WHERE number = $1 AND tenant_id = $2 AND source = 'consumer_opt_out'
                RETURNING 1)
            SELECT count(*) FROM gone
            """,
            msg.from_number,
            msg.tenant_id,
        )
        if removed:
            await emit(
                conn,
                NewEvent(msg.tenant_id, "optout.removed", str(msg.message_id), msg.trace_id, data),
            )
            await _queue_reply(conn, msg, new_id(), tenant_policy.optin_text, "optin_confirmation")
    elif match.intent == Intent.HELP:
        await _queue_reply(conn, msg, new_id(), tenant_policy.help_text, "help")


async def _queue_reply(
    conn: asyncpg.Connection, msg: InboundMessage, reply_id: uuid.UUID, text: str, kind: str
) -> None:
    segments = count_segments(text)
    row = {
        "id": reply_id,
        "tenant_id": msg.tenant_id,
        "direction": "outbound",
        "channel": msg.channel,
        "to": msg.from_number,
        "from": msg.to_number,
        "body": text,
        "purpose": "transactional",
        "status": "queued",
        "provider": msg.provider,
        "encoding": segments.encoding,
        "segments": segments.segments,
        "trace_id": msg.trace_id,
        "metadata": {"kind": kind, "reply_to": str(msg.message_id)},
    }
    await messages_repo.insert_message(conn, row)
    await emit(
        conn,
        NewEvent(
            msg.tenant_id,
            "message.accepted",
            str(reply_id),
            msg.trace_id,
            {
                "channel": msg.channel,
                "to": msg.from_number,
                "provider": msg.provider,
                "segments": segments.segments,
                "kind": kind,
                "reply_to": str(msg.message_id),
            },
        ),
    )
    await queue.enqueue(
        conn,
        DISPATCH_QUEUE,
        {"message_id": str(reply_id)},
        tenant_id=msg.tenant_id,
        trace_id=msg.trace_id,
        max_attempts=int(_state.get("max_attempts", 6)),  # type: ignore[call-overload]
    )
