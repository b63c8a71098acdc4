"""A run's state changes, each with its `workflow.*` event and follow-up job in one transaction.

Every writer (the API, the engine's job, the event subscriber, the timer) moves a run only
through these, holding the run's row lock, so a run's row, its timeline and its events never
disagree and a run is advanced by one job at a time.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from gateway import queue
from gateway.core.ids import new_id, new_trace_id
from gateway.events.outbox import NewEvent, emit
from gateway.workflows import repo

QUEUE = "workflows"
JOB_ATTEMPTS = 8
ENDED = frozenset({"completed", "canceled", "failed"})


def run_event(run: asyncpg.Record | dict[str, Any], kind: str, data: dict[str, Any]) -> NewEvent:
    return NewEvent(
        run["tenant_id"],
        f"workflow.{kind}",
        str(run["id"]),
        run["trace_id"],
        {"run_id": str(run["id"]), "workflow_id": str(run["workflow_id"])} | data,
    )


async def enqueue_advance(conn: asyncpg.Connection, run: asyncpg.Record) -> None:
    await queue.enqueue(
        conn,
        QUEUE,
        {"run_id": str(run["id"])},
        tenant_id=run["tenant_id"],
        trace_id=run["trace_id"],
        max_attempts=JOB_ATTEMPTS,
    )


async def start(
    conn: asyncpg.Connection,
    workflow: asyncpg.Record,
    variables: dict[str, Any],
    *,
    trigger: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> asyncpg.Record | None:
    """Insert a run at step 0, announce it and queue its first step. None: the trigger event
    (`trigger["seq"]`) already started this workflow once."""
    run = await repo.insert_run(
        conn,
        new_id(),
        workflow,
        variables,
        trace_id or new_trace_id(),
        trigger_seq=None if trigger is None else trigger["seq"],
    )
    if run is None:
        return None
    data: dict[str, Any] = {"name": workflow["name"], "variables": variables}
    if trigger is not None:
        data["trigger"] = trigger
    await emit(conn, run_event(run, "run.started", data))
    await enqueue_advance(conn, run)
    return run


async def finish_step(
    conn: asyncpg.Connection,
    run: asyncpg.Record,
    kind: str,
    outcome: str,
    detail: dict[str, Any],
    *,
    next_step: int,
    context: dict[str, Any],
) -> asyncpg.Record:
    """The run's current step is done: record it, and put the run at `next_step` (running)."""
    await repo.end_step(conn, run["id"], run["step"], "done", outcome, detail)
    moved = await repo.move_run(conn, run["id"], step=next_step, status="running", context=context)
    await emit(
        conn,
        run_event(
            run,
            "step.completed",
            {"step": run["step"], "kind": kind, "outcome": outcome, "detail": detail},
        ),
    )
    return moved


async def emit_started(conn: asyncpg.Connection, run: asyncpg.Record, step: int, kind: str) -> None:
    await emit(conn, run_event(run, "step.started", {"step": step, "kind": kind}))


async def begin_wait(
    conn: asyncpg.Connection,
    run: asyncpg.Record,
    *,
    until: str | None,
    subject: str | None,
    since: datetime | None,
    wake_at: datetime,
) -> None:
    """The run waits at its current step for `until` (about `subject`) or until `wake_at`."""
    await repo.set_waiting(
        conn, run["id"], until=until, subject=subject, since=since, wake_at=wake_at
    )
    detail = {"until": until, "wake_at": wake_at.isoformat()}
    await repo.end_step(conn, run["id"], run["step"], "waiting", None, detail)
    await emit(conn, run_event(run, "step.waiting", {"step": run["step"]} | detail))


async def end_wait(
    conn: asyncpg.Connection, run: asyncpg.Record, outcome: str, detail: dict[str, Any]
) -> None:
    """A waiting run's wait is over (its event came, or its deadline passed): on to the next
    step, in a job. The caller holds the run's lock and saw it waiting at this step."""
    context = dict(run["context"]) | {"last_outcome": outcome, "last_wait": outcome}
    moved = await finish_step(
        conn, run, "wait", outcome, detail, next_step=run["step"] + 1, context=context
    )
    await enqueue_advance(conn, moved)


async def complete(conn: asyncpg.Connection, run: asyncpg.Record, step: int) -> None:
    moved = await repo.move_run(
        conn, run["id"], step=step, status="completed", context=dict(run["context"])
    )
    await emit(conn, run_event(moved, "run.completed", {"step": step}))


async def fail(
    conn: asyncpg.Connection,
    run: asyncpg.Record,
    error: str,
    *,
    kind: str | None = None,
    code: str | None = None,
) -> None:
    """The run cannot go on: its current step (if it was taken) and the run are failed."""
    if kind is not None:
        await repo.end_step(
            conn, run["id"], run["step"], "failed", code or "failed", {"error": error}
        )
        await emit(
            conn,
            run_event(
                run,
                "step.failed",
                {"step": run["step"], "kind": kind, "error": error, "code": code},
            ),
        )
    moved = await repo.move_run(
        conn,
        run["id"],
        step=run["step"],
        status="failed",
        context=dict(run["context"]),
        error=error[:2000],
    )
    await emit(conn, run_event(moved, "run.failed", {"step": run["step"], "error": error}))


async def cancel(conn: asyncpg.Connection, run: asyncpg.Record) -> asyncpg.Record:
    """Stop a running or waiting run; the caller holds its lock, so no step is mid-way."""
    if run["status"] == "waiting":
        await repo.end_step(conn, run["id"], run["step"], "failed", "canceled", {})
    moved = await repo.move_run(
        conn, run["id"], step=run["step"], status="canceled", context=dict(run["context"])
    )
    await emit(conn, run_event(moved, "run.canceled", {"step": run["step"]}))
    return moved


def run_id_of(raw: Any) -> uuid.UUID:
    return raw if isinstance(raw, uuid.UUID) else uuid.UUID(str(raw))
