"""Delivery tracking's safety net: a receipt we could not store is recovered by asking.

A provider posts each status callback once. When we could not store one — PostgreSQL was
down, the webhook answered 503, Twilio does not retry — the message stays `queued`/`sent` at
the provider and the call short of its end, still holding its channel (DESIGN principle 11).
Each round (a supervised periodic task of the worker role) claims up to `batch` messages and
calls that have had no news for `message_age`/`call_age` seconds and were not asked within
that time either, asks their provider (`fetch_status`, where the provider can be asked) and
applies a forward answer through the very path the webhook takes. So a callback that arrives
meanwhile makes one of the two a recorded no-op, never a regression, and an answer that says
nothing new (still `sent`, still in progress) is not written at all.

The claim stamps `status_checked_at` in the same statement that picks the rows (FOR UPDATE
SKIP LOCKED), so any number of workers run it without asking twice, and a long answered call
is asked about once per `call_age`, not every round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from gateway.calls.service import CallService
from gateway.logs import get_logger
from gateway.messages.service import apply_report
from gateway.providers.contracts import CallRef, ProviderError
from gateway.providers.registry import ProviderRegistry
from gateway.settings import ReceiptsSettings

log = get_logger(__name__)

_CLAIM_MESSAGES = """
UPDATE messages m SET status_checked_at = now()
FROM (
    SELECT id FROM messages
    WHERE status IN ('queued', 'sent') AND provider_message_id IS NOT NULL
      AND provider = ANY($1::text[])
      AND updated_at < now() - make_interval(secs => $2)
      AND updated_at > now() - make_interval(secs => $3)
      AND (status_checked_at IS NULL OR status_checked_at < now() - make_interval(secs => $2))
    ORDER BY updated_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
) due
WHERE m.id = due.id
RETURNING m.id, m.status, m.provider, m.provider_message_id
"""

_CLAIM_CALLS = """
UPDATE calls c SET status_checked_at = now()
FROM (
    SELECT id FROM calls
    WHERE status IN ('dialing', 'ringing', 'answered') AND provider_call_id IS NOT NULL
      AND provider = ANY($1::text[])
      AND updated_at < now() - make_interval(secs => $2)
      AND updated_at > now() - make_interval(secs => $3)
      AND (status_checked_at IS NULL OR status_checked_at < now() - make_interval(secs => $2))
    ORDER BY updated_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
) due
WHERE c.id = due.id
RETURNING c.id, c.status, c.provider, c.provider_call_id,
    (SELECT a.attempt_key FROM call_attempts a
     WHERE a.call_id = c.id AND a.n = c.attempt_n) AS attempt_key
"""


@dataclass
class Round:
    """What one round did: asked, moved forward, unchanged, could not ask."""

    asked: int = 0
    moved: int = 0
    unchanged: int = 0
    failed: int = 0


@dataclass
class ReceiptReconciler:
    db: asyncpg.Pool
    registry: ProviderRegistry
    calls: CallService | None
    settings: ReceiptsSettings
    last: Round = field(default_factory=Round)

    async def run_once(self) -> Round:
        """One round over messages and calls; returns (and keeps in `last`) what it did."""
        done = Round()
        gate = asyncio.Semaphore(self.settings.concurrency)
        messages = await self._claim_messages()
        calls = await self._claim_calls()
        await asyncio.gather(
            *(self._bounded(gate, self._message, row, done) for row in messages),
            *(self._bounded(gate, self._call, row, done) for row in calls),
        )
        if done.asked:
            log.info(
                "asked providers about unsettled statuses",
                asked=done.asked,
                moved=done.moved,
                unchanged=done.unchanged,
                failed=done.failed,
            )
        self.last = done
        return done

    async def _bounded(
        self,
        gate: asyncio.Semaphore,
        ask: Callable[[asyncpg.Record], Awaitable[bool]],
        row: asyncpg.Record,
        done: Round,
    ) -> None:
        async with gate:
            done.asked += 1
            try:
                async with asyncio.timeout(self.settings.fetch_timeout):
                    moved = await ask(row)
            except (ProviderError, TimeoutError) as exc:
                done.failed += 1  # asked again after the age, like any unsettled row
                log.warning("could not ask a provider for a status", error=str(exc))
                return
            if moved:
                done.moved += 1
            else:
                done.unchanged += 1

    # -- messages ---------------------------------------------------------------------------

    async def _claim_messages(self) -> list[asyncpg.Record]:
        askable = [p.name for p in self.registry.messaging_providers() if p.fetches_status]
        if not askable:
            return []
        cfg = self.settings
        return await self.db.fetch(
            _CLAIM_MESSAGES, askable, cfg.message_age, cfg.give_up_after, cfg.batch
        )

    async def _message(self, row: asyncpg.Record) -> bool:
        provider = self.registry.messaging(row["provider"])
        report = await provider.fetch_status(row["provider_message_id"])
        if report is None or report.status == row["status"]:
            return False  # nothing new: no write, no no-op event every round
        return bool(await apply_report(self.db, report))

    # -- calls ------------------------------------------------------------------------------

    async def _claim_calls(self) -> list[asyncpg.Record]:
        if self.calls is None:
            return []
        askable = [p.name for p in self.registry.voice_providers() if p.fetches_status]
        if not askable:
            return []
        cfg = self.settings
        return await self.db.fetch(
            _CLAIM_CALLS, askable, cfg.call_age, cfg.give_up_after, cfg.batch
        )

    async def _call(self, row: asyncpg.Record) -> bool:
        assert self.calls is not None
        if not row["attempt_key"]:
            return False
        provider = self.registry.voice(row["provider"])
        ref = CallRef(row["provider"], row["attempt_key"], row["provider_call_id"])
        report = await provider.fetch_status(ref)
        if report is None or report.status is None or report.status == row["status"]:
            return False
        await self.calls.apply_report(report)  # the webhook's path: forward, or a no-op
        return True
