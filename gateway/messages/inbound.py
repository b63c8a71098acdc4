"""Inbound messages: who they are for (the DID's tenant), stored and announced as events.

Guardrails hook in here for opt-out keywords (STOP/START/HELP) — see `InboundHook`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from gateway.core.ids import new_id, new_trace_id
from gateway.core.segments import count_segments
from gateway.events.outbox import NewEvent, emit
from gateway.messages import repo


@dataclass(frozen=True)
class InboundMessage:
    tenant_id: uuid.UUID
    message_id: uuid.UUID
    channel: str
    from_number: str
    to_number: str
    body: str
    trace_id: str
    provider: str
    provider_message_id: str


# Called inside the storing transaction; may write (e.g. an opt-out entry) and emit events.
InboundHook = Callable[[asyncpg.Connection, InboundMessage], Awaitable[None]]
_hooks: list[InboundHook] = []


def register_inbound_hook(hook: InboundHook) -> None:
    if hook not in _hooks:
        _hooks.append(hook)


async def receive(
    db: asyncpg.Pool,
    *,
    provider: str,
    provider_message_id: str,
    channel: str,
    from_number: str,
    to_number: str,
    body: str,
) -> InboundMessage | None:
    """Store an inbound message for the tenant owning `to_number`; None if nobody owns it."""
    async with db.acquire() as conn, conn.transaction():
        owner = await repo.tenant_for_did(conn, to_number)
        if owner is None:
            return None
        existing = await repo.message_by_provider_ref(conn, provider, provider_message_id)
        if existing is not None:  # the provider retried its webhook
            return None
        msg = InboundMessage(
            owner["tenant_id"],
            new_id(),
            channel,
            from_number,
            to_number,
            body,
            new_trace_id(),
            provider,
            provider_message_id,
        )
        seg = count_segments(body)
        await repo.insert_message(
            conn,
            {
                "id": msg.message_id,
                "tenant_id": msg.tenant_id,
                "direction": "inbound",
                "channel": channel,
                "to": to_number,
                "from": from_number,
                "body": body,
                "purpose": "transactional",
                "status": "received",
                "provider": provider,
                "provider_message_id": provider_message_id,
                "encoding": seg.encoding,
                "segments": seg.segments,
                "trace_id": msg.trace_id,
                "metadata": {},
            },
        )
        await emit(
            conn,
            NewEvent(
                msg.tenant_id,
                "message.received",
                str(msg.message_id),
                msg.trace_id,
                {"from": from_number, "to": to_number, "channel": channel, "provider": provider},
            ),
        )
        for hook in _hooks:
            await hook(conn, msg)
        return msg
