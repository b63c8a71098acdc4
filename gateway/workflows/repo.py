"""Workflows and their runs in PostgreSQL (SQL only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

Conn = asyncpg.Pool | asyncpg.Connection

RUN_COLUMNS = """
    r.id, r.tenant_id, r.workflow_id, r.status, r.variables, r.trace_id, r.step, r.context,
    r.wait_until, r.wait_subject, r.wait_since, r.wake_at, r.trigger_seq, r.error,
    r.created_at, r.updated_at, r.ended_at
"""


async def insert_workflow(conn: Conn, row: dict[str, Any]) -> asyncpg.Record:
    return await conn.fetchrow(
        """
        INSERT INTO workflows (id, tenant_id, name, steps, trigger, trigger_event, webhook_secret)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING id, tenant_id, name, steps, trigger, webhook_secret, created_at
        """,
        row["id"],
        row["tenant_id"],
        row["name"],
        row["steps"],
        row["trigger"],
        (row["trigger"] or {}).get("event"),
        row["webhook_secret"],
    )


async def get_workflow(
    conn: Conn, workflow_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT id, tenant_id, name, steps, trigger, webhook_secret, created_at FROM workflows
         WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
        """,
        workflow_id,
        tenant_id,
    )


async def list_workflows(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime | None, uuid.UUID | None],
) -> list[asyncpg.Record]:
    """Newest first on (created_at, id); `limit + 1` rows so the page knows it is not last."""
    return await conn.fetch(
        """
        SELECT id, tenant_id, name, steps, trigger, created_at FROM workflows
         WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
         ORDER BY created_at DESC, id DESC LIMIT $4
        """,
        tenant_id,
        after[0],
        after[1],
        limit + 1,
    )


async def insert_run(
    conn: asyncpg.Connection,
    run_id: uuid.UUID,
    workflow: asyncpg.Record,
    variables: dict[str, Any],
    trace_id: str,
    trigger_seq: int | None = None,
) -> asyncpg.Record | None:
    """A new run at step 0; None when this trigger event already started one."""
    return await conn.fetchrow(
        f"""
        INSERT INTO workflow_runs AS r (id, tenant_id, workflow_id, variables, trace_id, trigger_seq)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (workflow_id, trigger_seq) DO NOTHING
        RETURNING {RUN_COLUMNS}
        """,
        run_id,
        workflow["tenant_id"],
        workflow["id"],
        variables,
        trace_id,
        trigger_seq,
    )


async def get_run(
    conn: Conn, run_id: uuid.UUID, tenant_id: uuid.UUID | None = None, *, lock: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {RUN_COLUMNS} FROM workflow_runs r
         WHERE r.id = $1 AND ($2::uuid IS NULL OR r.tenant_id = $2)
        {"FOR UPDATE" if lock else ""}
        """,
        run_id,
        tenant_id,
    )


async def list_runs(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime | None, uuid.UUID | None],
    status: str | None,
    workflow_id: uuid.UUID | None,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""
        SELECT {RUN_COLUMNS} FROM workflow_runs r
         WHERE r.tenant_id = $1 AND ($2::text IS NULL OR r.status = $2)
           AND ($3::uuid IS NULL OR r.workflow_id = $3)
           AND ($4::timestamptz IS NULL OR (r.created_at, r.id) < ($4, $5::uuid))
         ORDER BY r.created_at DESC, r.id DESC LIMIT $6
        """,
        tenant_id,
        status,
        workflow_id,
        after[0],
        after[1],
        limit + 1,
    )


async def run_steps(conn: Conn, run_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT step, kind, status, outcome, detail, started_at, ended_at FROM workflow_steps
         WHERE run_id = $1 ORDER BY step
        """,
        run_id,
    )


async def start_step(conn: asyncpg.Connection, run_id: uuid.UUID, step: int, kind: str) -> bool:
    """The step's timeline row; False when it exists (a retried job takes the step again)."""
    return bool(
        await conn.fetchval(
            """
            INSERT INTO workflow_steps (run_id, step, kind, status) VALUES ($1, $2, $3, 'running')
            ON CONFLICT DO NOTHING RETURNING true
            """,
            run_id,
            step,
            kind,
        )
    )


async def end_step(
    conn: asyncpg.Connection,
    run_id: uuid.UUID,
    step: int,
    status: str,
    outcome: str | None,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        """
        UPDATE workflow_steps
           SET status = $3, outcome = $4, detail = detail || $5::jsonb,
               ended_at = CASE WHEN $3 = 'waiting' THEN NULL ELSE now() END
         WHERE run_id = $1 AND step = $2
        """,
        run_id,
        step,
        status,
        outcome,
        detail,
    )


async def move_run(
    conn: asyncpg.Connection,
    run_id: uuid.UUID,
    *,
    step: int,
    status: str,
    context: dict[str, Any],
    error: str | None = None,
) -> asyncpg.Record:
    """Put the run at `step` in `status` (what it waited for is cleared)."""
    return await conn.fetchrow(
        f"""
        UPDATE workflow_runs r
           SET step = $2, status = $3, context = $4, error = coalesce($5, r.error),
               wait_until = NULL, wait_subject = NULL, wait_since = NULL, wake_at = NULL,
               updated_at = now(),
               ended_at = CASE WHEN $3 IN ('completed', 'canceled', 'failed') THEN now() END
         WHERE r.id = $1
        RETURNING {RUN_COLUMNS}
        """,
        run_id,
        step,
        status,
        context,
        error,
    )


async def set_waiting(
    conn: asyncpg.Connection,
    run_id: uuid.UUID,
    *,
    until: str | None,
    subject: str | None,
    since: datetime | None,
    wake_at: datetime,
) -> None:
    await conn.execute(
        """
        UPDATE workflow_runs
           SET status = 'waiting', wait_until = $2, wait_subject = $3, wait_since = $4,
               wake_at = $5, updated_at = now()
         WHERE id = $1
        """,
        run_id,
        until,
        subject,
        since,
        wake_at,
    )


async def due_waits(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Waiting runs whose deadline has passed on the engine's clock, locked (others skip them)."""
    return await conn.fetch(
        f"""
        SELECT {RUN_COLUMNS} FROM workflow_runs r
         WHERE r.status = 'waiting' AND r.wake_at <= $1
         ORDER BY r.wake_at LIMIT $2
         FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )


async def waiting_on(conn: asyncpg.Connection, subjects: list[str]) -> list[asyncpg.Record]:
    """Waiting runs whose awaited subject (message/call id, replying number) is one of these."""
    return await conn.fetch(
        f"""
        SELECT {RUN_COLUMNS} FROM workflow_runs r
         WHERE r.status = 'waiting' AND r.wait_subject = ANY($1::text[])
         ORDER BY r.id
         FOR UPDATE
        """,
        subjects,
    )


async def triggered(
    conn: asyncpg.Connection, tenant_ids: list[uuid.UUID], events: list[str]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT id, tenant_id, name, steps, trigger, created_at FROM workflows
         WHERE tenant_id = ANY($1::uuid[]) AND trigger_event = ANY($2::text[])
         ORDER BY created_at, id
        """,
        tenant_ids,
        events,
    )


async def lock_cursor(conn: asyncpg.Connection, name: str, *, share: bool = False) -> int:
    """The subscriber's cursor, locked: FOR UPDATE by the subscriber itself, FOR SHARE by a run
    about to wait (so the two never miss each other: see gateway/workflows/waits.py)."""
    await conn.execute(
        "INSERT INTO event_cursors (name, seq) VALUES ($1, 0) ON CONFLICT DO NOTHING", name
    )
    return await conn.fetchval(
        f"SELECT seq FROM event_cursors WHERE name = $1 FOR {'SHARE' if share else 'UPDATE'}",
        name,
    )


async def move_cursor(conn: asyncpg.Connection, name: str, seq: int) -> None:
    await conn.execute(
        "UPDATE event_cursors SET seq = $2, updated_at = now() WHERE name = $1", name, seq
    )


async def tenant_name(conn: Conn, tenant_id: uuid.UUID) -> str:
    return await conn.fetchval("SELECT name FROM tenants WHERE id = $1", tenant_id)
