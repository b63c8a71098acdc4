"""Workflows and their runs in PostgreSQL (SQL only)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

Conn = asyncpg.Pool | asyncpg.Connection

# A workflow's current definition and its life; its secret only where a caller needs it.
WORKFLOW_COLUMNS = """
    id, tenant_id, name, steps, trigger, version, created_at, updated_at, trigger_since,
    archived_at
"""
RUN_COLUMNS = """
    r.id, r.tenant_id, r.workflow_id, r.workflow_version, r.status, r.variables, r.trace_id, r.step, r.context,
    r.wait_until, r.wait_subject, r.wait_since, r.wake_at, r.trigger_seq, r.error,
    r.created_at, r.updated_at, r.ended_at
"""


async def insert_workflow(conn: Conn, row: dict[str, Any]) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        INSERT INTO workflows (id, tenant_id, name, steps, trigger, trigger_event, webhook_secret)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING {WORKFLOW_COLUMNS}, webhook_secret
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
    conn: Conn, workflow_id: uuid.UUID, tenant_id: uuid.UUID | None = None, *, lock: str = ""
) -> asyncpg.Record | None:
    """The workflow's current definition; `lock` "SHARE" to start a run of it (an edit or an
    archive waits for the start to commit), "UPDATE" to edit or archive it."""
    assert lock in ("", "SHARE", "UPDATE")
    return await conn.fetchrow(
        f"""
        SELECT {WORKFLOW_COLUMNS} FROM workflows
         WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
        {f"FOR {lock}" if lock else ""}
        """,
        workflow_id,
        tenant_id,
    )


async def get_version(conn: Conn, workflow_id: uuid.UUID, version: int) -> asyncpg.Record | None:
    """One version of a workflow's definition, with the workflow's secret (a run's steps)."""
    return await conn.fetchrow(
        """
        SELECT w.id, w.tenant_id, v.version, v.name, v.steps, v.trigger, v.created_at,
               w.webhook_secret
          FROM workflow_versions v JOIN workflows w ON w.id = v.workflow_id
         WHERE v.workflow_id = $1 AND v.version = $2
        """,
        workflow_id,
        version,
    )


async def list_versions(
    conn: Conn, workflow_id: uuid.UUID, *, limit: int, before: int | None
) -> list[asyncpg.Record]:
    """Newest version first; `limit + 1` rows so the page knows it is not last."""
    return await conn.fetch(
        """
        SELECT version, name, steps, trigger, created_at FROM workflow_versions
         WHERE workflow_id = $1 AND ($2::int IS NULL OR version < $2)
         ORDER BY version DESC LIMIT $3
        """,
        workflow_id,
        before,
        limit + 1,
    )


async def update_workflow(
    conn: asyncpg.Connection,
    workflow_id: uuid.UUID,
    *,
    name: str,
    steps: list[dict[str, Any]],
    trigger: dict[str, Any] | None,
) -> asyncpg.Record:
    """The next version (the caller holds the row FOR UPDATE); the trigger on `workflows`
    records it in workflow_versions. A changed trigger holds from now on."""
    return await conn.fetchrow(
        f"""
        UPDATE workflows
           SET version = version + 1, name = $2, steps = $3, trigger = $4, trigger_event = $5,
               updated_at = now(),
               trigger_since = CASE WHEN trigger IS DISTINCT FROM $4::jsonb
                                    THEN now() ELSE trigger_since END
         WHERE id = $1
        RETURNING {WORKFLOW_COLUMNS}
        """,
        workflow_id,
        name,
        steps,
        trigger,
        (trigger or {}).get("event"),
    )


async def archive_workflow(conn: asyncpg.Connection, workflow_id: uuid.UUID) -> asyncpg.Record:
    """Mark it archived (the first time; archiving again keeps the first instant)."""
    return await conn.fetchrow(
        f"""
        UPDATE workflows SET archived_at = coalesce(archived_at, now()) WHERE id = $1
        RETURNING {WORKFLOW_COLUMNS}
        """,
        workflow_id,
    )


async def list_workflows(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime | None, uuid.UUID | None],
    include_archived: bool = False,
) -> list[asyncpg.Record]:
    """Newest first on (created_at, id); `limit + 1` rows so the page knows it is not last."""
    return await conn.fetch(
        f"""
        SELECT {WORKFLOW_COLUMNS} FROM workflows
         WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
           AND ($5 OR archived_at IS NULL)
         ORDER BY created_at DESC, id DESC LIMIT $4
        """,
        tenant_id,
        after[0],
        after[1],
        limit + 1,
        include_archived,
    )


async def insert_run(
    conn: asyncpg.Connection,
    run_id: uuid.UUID,
    workflow: asyncpg.Record,
    variables: dict[str, Any],
    trace_id: str,
    trigger_seq: int | None = None,
) -> asyncpg.Record | None:
    """A new run at step 0 of the workflow's current version (the caller read it FOR SHARE);
    None when this trigger event already started one."""
    return await conn.fetchrow(
        f"""
        INSERT INTO workflow_runs AS r
               (id, tenant_id, workflow_id, workflow_version, variables, trace_id, trigger_seq)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (workflow_id, trigger_seq) DO NOTHING
        RETURNING {RUN_COLUMNS}
        """,
        run_id,
        workflow["tenant_id"],
        workflow["id"],
        workflow["version"],
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
    """The live workflows these events may trigger, FOR SHARE: an edit or archive waits for
    the runs started from them to commit, and one that committed first is seen (re-checked)."""
    return await conn.fetch(
        f"""
        SELECT {WORKFLOW_COLUMNS} FROM workflows
         WHERE tenant_id = ANY($1::uuid[]) AND trigger_event = ANY($2::text[])
           AND archived_at IS NULL
         ORDER BY created_at, id
         FOR SHARE
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
