"""What a wait waits for, and whether something that happened ends it.

A wait on an event concerns the run's latest send: `message.inbound` a reply from the number
it went to, `message.<status>` / `call.<status>` that message or call reaching the status —
or any final status (a failed message will never be delivered), whose name is the outcome.
A wait whose send was refused (or that has no such send) ends at once with the send's
outcome: nothing was sent, so nothing can answer it.

Two writers could miss each other: a run about to wait checks the tables (messages, calls:
the truth) and the event subscriber matches events to waiting runs. The run holds the
subscriber's cursor row FOR SHARE while it checks and starts waiting, the subscriber holds it
FOR UPDATE while it matches a batch, so either the run's check sees the change (it committed
before the event could be read) or the subscriber sees the run waiting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from gateway.calls.states import FINAL as CALL_FINAL
from gateway.messages.states import FINAL as MESSAGE_FINAL

REPLY = frozenset({"message.inbound", "message.received"})
Outcome = tuple[str, dict[str, Any]]


def subject_for(until: str, context: dict[str, Any]) -> str | None:
    """The awaited subject: the latest send's message/call id, or its number for a reply."""
    last = context.get("send")
    if not last or last.get("outcome") not in ("accepted", "scheduled"):
        return None
    if last.get("kind") != until.split(".", 1)[0]:
        return None
    return last.get("to") if until in REPLY else last.get("id")


def _status_outcome(until: str, status: str | None) -> str | None:
    kind, _, wanted = until.partition(".")
    final = CALL_FINAL if kind == "call" else MESSAGE_FINAL
    if status is None:
        return None
    if status == wanted or status in final:
        return status
    return None


async def already(
    conn: asyncpg.Connection, run: asyncpg.Record, until: str, subject: str
) -> Outcome | None:
    """Has the awaited thing happened already (before the run began to wait)?"""
    if until in REPLY:
        since = datetime.fromisoformat(run["context"]["send"]["at"])
        row = await conn.fetchrow(
            """
            SELECT id FROM messages
             WHERE tenant_id = $1 AND direction = 'inbound' AND from_number = $2
               AND created_at >= $3::timestamptz
             ORDER BY created_at LIMIT 1
            """,
            run["tenant_id"],
            subject,
            since,
        )
        return None if row is None else ("replied", {"message_id": str(row["id"])})
    table = "calls" if until.startswith("call.") else "messages"
    status = await conn.fetchval(f"SELECT status FROM {table} WHERE id = $1::uuid", subject)
    outcome = _status_outcome(until, status)
    return None if outcome is None else (outcome, {f"{table[:-1]}_id": subject})


def subject_of_event(event: asyncpg.Record) -> str | None:
    """The waits an event could end are keyed by this (see `subject_for`)."""
    t = event["type"]
    if t == "message.received":
        return (event["data"] or {}).get("from")
    if t.startswith(("message.", "call.")):
        return event["subject"]
    return None


def match(run: asyncpg.Record, event: asyncpg.Record) -> Outcome | None:
    """Does this logged event end this waiting run's wait?"""
    until = run["wait_until"]
    if until is None or event["tenant_id"] != run["tenant_id"]:
        return None
    t: str = event["type"]
    if until in REPLY:
        if (
            t == "message.received"
            and (event["data"] or {}).get("from") == run["wait_subject"]
            and event["created_at"] >= run["wait_since"]
        ):
            return "replied", {"message_id": event["subject"], "event_id": event["seq"]}
        return None
    kind = until.split(".", 1)[0]
    if event["subject"] != run["wait_subject"] or not t.startswith(f"{kind}."):
        return None
    outcome = _status_outcome(until, t.split(".", 1)[1])
    if outcome is None:
        return None
    return outcome, {f"{kind}_id": event["subject"], "event_id": event["seq"]}
