"""The usage exporter: usage rows → Stripe meter events, each unit of usage billed once.

One exporter works at a time (a session advisory lock, as the event sequencer holds; every
worker runs one, the others stand by, and a killed holder's lock dies with its connection).
A round: resume the oldest batch that was planned and never acknowledged, else plan the next
one (rows picked, events fixed, rows marked: one transaction); send it; mark it sent. Until
Stripe acknowledges it the batch is retried with exponential backoff and jitter, each failure
counted on it (a Stripe outage delays billing, it never drops usage). A resend carries the same
identifiers, so what Stripe already took from a half-sent batch is dropped there, not billed
twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import asyncpg

from gateway import db
from gateway.billing import repo
from gateway.billing.plan import plan_events
from gateway.billing.sender import MeterEventSender, SendFailed
from gateway.events.wake import sleep_until
from gateway.logs import get_logger
from gateway.settings import StripeBillingSettings

log = get_logger(__name__)

LOCK_KEY = 0x74726B5F62696C  # "trk_bil"


class UsageExporter:
    def __init__(
        self,
        database_url: str,
        cfg: StripeBillingSettings,
        sender_factory: Callable[[StripeBillingSettings], MeterEventSender] = MeterEventSender,
    ) -> None:
        self.database_url = database_url
        self.cfg = cfg
        self.sender_factory = sender_factory
        self.leader = False
        self.batches_sent = 0

    async def run(self, stopping: asyncio.Event) -> None:
        conn = await db.connect(self.database_url)
        sender: MeterEventSender | None = None
        try:
            while not stopping.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    break
                await sleep_until(stopping, None, self.cfg.interval)  # another worker exports
            else:
                return
            self.leader = True
            log.info("usage exporter is the leader")
            sender = self.sender_factory(self.cfg)
            while not stopping.is_set():
                if not await self.step(conn, sender, stopping):
                    await sleep_until(stopping, None, self.cfg.interval)
        finally:
            self.leader = False
            if sender is not None:
                await sender.close()
            await conn.close()  # ends the session: releases the lock

    async def step(
        self, conn: asyncpg.Connection, sender: MeterEventSender, stopping: asyncio.Event
    ) -> bool:
        """Send one batch until Stripe acknowledges it; False when there was none (or we are
        stopping before it went through: it stays planned and is sent next time)."""
        batch = await repo.open_batch(conn)
        batch_id = batch["id"] if batch is not None else await self.plan(conn)
        if batch_id is None:
            return False
        events = await repo.batch_events(conn, batch_id)
        delay = self.cfg.retry_initial
        while True:
            try:
                await sender.send(events)
            except SendFailed as exc:
                attempts = await repo.mark_failed(conn, batch_id, str(exc))
                wait = min(self.cfg.retry_max, delay) * random.uniform(0.8, 1.2)
                delay *= 2
                log.warning(
                    "usage export to Stripe failed; retrying",
                    batch=batch_id,
                    failed_sends=attempts,
                    error=str(exc),
                    retry_in_s=round(wait, 2),
                )
                await sleep_until(stopping, None, wait)
                if stopping.is_set():
                    return False
                continue
            await repo.mark_sent(conn, batch_id)
            self.batches_sent += 1
            log.info("usage exported to Stripe", batch=batch_id, events=len(events))
            return True

    async def plan(self, conn: asyncpg.Connection) -> int | None:
        """Put the next usage rows in a batch with their meter events (None: nothing to do)."""
        async with conn.transaction():
            rows = await repo.pending_usage(
                conn, list(self.cfg.meters), self.cfg.start_at, self.cfg.batch_size
            )
            if not rows:
                return None
            events = plan_events(rows, self.cfg.meters, self.cfg.window, self.cfg.identifier_prefix)
            return await repo.insert_batch(conn, rows, events)
