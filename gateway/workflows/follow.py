"""What moves waiting runs and starts triggered ones: the event log and the clock.

The subscriber reads the event log in seq order from its durable cursor (`event_cursors`
row `workflows`), like webhook fan-out: one transaction locks the cursor, reads a batch, ends
the waits its events answer (waits.match), starts a run of every workflow whose trigger the
event matches (unique per (workflow, event seq): a replayed batch starts nothing twice) and
moves the cursor. Triggers are matched on the workflows' current versions, read FOR SHARE and
skipping archived ones: an edit or a DELETE waits for the batch's runs to commit, and once
it has answered, no match uses what it replaced. Any number of workers run it; they take turns on the row lock.

The timer ends the waits whose deadline has passed on the engine's clock (injected: one
clock decides both when a wait was due and whether it is), FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from gateway.events import log
from gateway.events.sequencer import SEQUENCED_CHANNEL
from gateway.events.wake import follow, sleep_until
from gateway.workflows import repo, runs, waits
from gateway.workflows.engine import CURSOR
from gateway.workflows.schemas import TRIGGER_EVENTS

# The events whose data the subscriber reads (waits.subject_of_event, waits.match).
DATA_OF = ("message.received",)
# Read whatever the runs: triggers, and replies (a wait on a number, not a subject).
_READ_ALWAYS = (*TRIGGER_EVENTS, "message.received")
# Other message and call events matter only to a run waiting on their subject (the cursor's
# lock keeps a run from starting to wait meanwhile: see waits.py).
_MAY_CONCERN = """
b.type = ANY($4::text[])
OR ((b.type LIKE 'message.%' OR b.type LIKE 'call.%') AND EXISTS (
    SELECT 1 FROM workflow_runs r WHERE r.status = 'waiting' AND r.wait_subject = b.subject))
"""


async def subscriber_step(pool: asyncpg.Pool, batch: int) -> int:
    """Consume the next batch of logged events; returns how many were read."""
    async with pool.acquire() as conn, conn.transaction():
        cursor = await log.lock_cursor(conn, CURSOR)
        # Only the events that may trigger a run or end a wait are read (no other is used).
        span, last, rows = await log.global_candidates(
            conn, cursor, batch, _MAY_CONCERN, list(_READ_ALWAYS), data_of=DATA_OF
        )
        if not span:
            return 0
        await _end_waits(conn, rows)
        await _start_triggered(conn, rows)
        await repo.move_cursor(conn, CURSOR, last)
        return span


async def _end_waits(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> None:
    subjects = {s for r in rows if (s := waits.subject_of_event(r)) is not None}
    if not subjects:
        return
    waiting = await repo.waiting_on(conn, sorted(subjects))
    ended: set[Any] = set()
    for event in rows:
        for run in waiting:
            if run["id"] in ended:
                continue
            found = waits.match(run, event)
            if found is not None:
                ended.add(run["id"])
                await runs.end_wait(conn, run, *found)


async def _start_triggered(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> None:
    candidates = [r for r in rows if r["type"] in TRIGGER_EVENTS]
    if not candidates:
        return
    workflows = await repo.triggered(
        conn,
        list({r["tenant_id"] for r in candidates}),
        sorted({r["type"] for r in candidates}),
    )
    if not workflows:
        return
    for event in candidates:
        for wf in workflows:
            trigger = wf["trigger"] or {}
            if (
                wf["tenant_id"] != event["tenant_id"]
                or trigger.get("event") != event["type"]
                # what happened after this trigger held (its creation, or the edit that set it)
                or wf["trigger_since"] > event["created_at"]
            ):
                continue
            variables = await _variables(conn, event, trigger)
            if variables is None:
                continue
            source = {"seq": event["seq"], "type": event["type"], "subject": event["subject"]}
            await runs.start(conn, wf, variables, trigger=source)


async def _variables(
    conn: asyncpg.Connection, event: asyncpg.Record, trigger: dict[str, Any]
) -> dict[str, Any] | None:
    """A triggered run's variables, from the call or message the event is about (its
    metadata too: a call placed with {"name": "Ana"} gives the run {{name}}); None when the
    trigger's filter leaves the event out."""
    if event["type"].startswith("call."):
        call = await conn.fetchrow(
            """
            SELECT id, to_number, from_number, status, metadata, on_answer, agent FROM calls
             WHERE id = $1::uuid
            """,
            event["subject"],
        )
        if call is None:
            return None
        agent = bool((call["on_answer"] or {}).get("agent") or call["agent"])
        if trigger.get("agent_calls_only") and not agent:
            return None
        return {
            **(call["metadata"] or {}),
            "to": call["to_number"],
            "from": call["from_number"] or "",
            "call_id": str(call["id"]),
            "call_status": call["status"],
        }
    message = await conn.fetchrow(
        "SELECT id, to_number, from_number, body FROM messages WHERE id = $1::uuid",
        event["subject"],
    )
    if message is None:
        return None
    return {
        # The run answers the sender: {{to}} is who wrote to us.
        "to": message["from_number"],
        "from": message["to_number"],
        "body": message["body"],
        "message_id": str(message["id"]),
    }


class Subscriber:
    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        *,
        batch: int = 500,
        interval: float = 5.0,
        settle: float = 0.0,
    ) -> None:
        self.pool = pool
        self.database_url = database_url
        self.batch = batch
        self.interval = interval
        self.settle = settle

    async def run(self, stopping: asyncio.Event) -> None:
        await follow(
            self.database_url,
            SEQUENCED_CHANNEL,
            lambda: subscriber_step(self.pool, self.batch),
            stopping,
            batch=self.batch,
            interval=self.interval,
            settle=self.settle,
        )


async def wake_due(pool: asyncpg.Pool, now: datetime, batch: int = 200) -> int:
    """End the waits due at `now` (the engine's clock); how many."""
    async with pool.acquire() as conn, conn.transaction():
        due = await repo.due_waits(conn, now, batch)
        for run in due:
            outcome = "timed_out" if run["wait_until"] else "elapsed"
            await runs.end_wait(conn, run, outcome, {"wake_at": run["wake_at"].isoformat()})
        return len(due)


class Timer:
    """Every `interval`, the waits that are due on `clock` end (more at once if a batch was
    full)."""

    def __init__(
        self, pool: asyncpg.Pool, clock: Callable[[], datetime], *, interval: float = 1.0
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.interval = interval

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            if await wake_due(self.pool, self.clock()) >= 200:
                continue
            await sleep_until(stopping, None, self.interval)
