"""SQL for messages, attempts, templates and usage. Every read is filtered by tenant."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gateway.messages.states import sources_for

Conn = asyncpg.Connection | asyncpg.Pool

MESSAGE_COLUMNS = """
    m.id, m.trace_id, m.direction, m.channel, m.to_number AS "to", m.from_number AS "from", m.body,
    m.template, m.purpose, m.status, m.provider, m.provider_message_id, m.encoding, m.segments,
    m.error_code, m.error_detail, m.send_at, m.metadata, m.created_at, m.updated_at,
    m.recipient_state AS state, m.subject, m.html
"""

_TIMELINE = """
    coalesce((SELECT json_agg(json_build_object('id', e.id, 'seq', e.seq, 'type', e.type,
                                                'at', e.created_at, 'data', e.data) ORDER BY e.id)
              FROM events e WHERE e.tenant_id = m.tenant_id AND e.subject = m.id::text), '[]'::json)
"""


INSERT_COLUMNS = (
    ("id", "uuid"),
    ("tenant_id", "uuid"),
    ("direction", "text"),
    ("channel", "text"),
    ("to", "text"),
    ("from", "text"),
    ("body", "text"),
    ("template", "text"),
    ("purpose", "text"),
    ("status", "text"),
    ("provider", "text"),
    ("provider_message_id", "text"),
    ("encoding", "text"),
    ("segments", "int"),
    ("send_at", "timestamptz"),
    ("trace_id", "text"),
    ("metadata", "jsonb"),
    ("error_code", "text"),
    ("error_detail", "text"),
    ("state", "text"),  # column recipient_state
    ("subject", "text"),
    ("html", "text"),
)
MESSAGE_DEFAULTS: dict[str, Any] = {"metadata": {}}

_INSERT_MANY = f"""
INSERT INTO messages (id, tenant_id, direction, channel, to_number, from_number, body, template,
                      purpose, status, provider, provider_message_id, encoding, segments,
                      send_at, trace_id, metadata, error_code, error_detail, recipient_state,
                      subject, html)
SELECT * FROM unnest({", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(INSERT_COLUMNS, 1))})
RETURNING id, created_at, updated_at
"""


async def insert_messages(
    conn: asyncpg.Connection, rows: list[dict[str, Any]]
) -> dict[uuid.UUID, asyncpg.Record]:
    """Insert many messages in one statement; their stamps, by id."""
    if not rows:
        return {}
    columns = [
        [row.get(name, MESSAGE_DEFAULTS.get(name)) for row in rows] for name, _ in INSERT_COLUMNS
    ]
    return {r["id"]: r for r in await conn.fetch(_INSERT_MANY, *columns)}


async def insert_message(conn: asyncpg.Connection, row: dict[str, Any]) -> asyncpg.Record:
    return (await insert_messages(conn, [row]))[row["id"]]


async def message_detail(
    conn: Conn, tenant_id: uuid.UUID, message_id: uuid.UUID
) -> asyncpg.Record | None:
    """The message, its attempts and its whole timeline in one query."""
    return await conn.fetchrow(
        f"""
        SELECT {MESSAGE_COLUMNS},
            coalesce((SELECT json_agg(row_to_json(a) ORDER BY a.n) FROM (
                SELECT n, provider, started_at, finished_at, outcome, error, latency_ms, provider_message_id
                FROM message_attempts WHERE message_id = m.id) a), '[]'::json) AS attempts,
            {_TIMELINE} AS timeline
        FROM messages m WHERE m.tenant_id = $1 AND m.id = $2
        """,
        tenant_id,
        message_id,
    )


async def trace(conn: Conn, tenant_id: uuid.UUID, trace_id: str) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        SELECT
            coalesce((SELECT json_agg(row_to_json(x) ORDER BY x.created_at) FROM (
                SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.tenant_id = $1 AND m.trace_id = $2) x),
                '[]'::json) AS messages,
            coalesce((SELECT json_agg(json_build_object('id', e.id, 'seq', e.seq, 'type', e.type,
                                                        'at', e.created_at, 'data', e.data) ORDER BY e.id)
                      FROM events e WHERE e.tenant_id = $1 AND e.trace_id = $2), '[]'::json) AS timeline
        """,
        tenant_id,
        trace_id,
    )


async def message_for_dispatch(conn: Conn, message_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """
        SELECT id, tenant_id, channel, to_number, from_number, body, purpose, status, provider, trace_id,
               segments, encoding, metadata, recipient_state, subject, html
        FROM messages WHERE id = $1
        """,
        message_id,
    )


async def move_status(
    conn: asyncpg.Connection,
    message_id: uuid.UUID,
    new: str,
    *,
    provider: str | None = None,
    provider_message_id: str | None = None,
    error_code: str | None = None,
    error_detail: str | None = None,
) -> asyncpg.Record | None:
    """Compare-and-set forward move; None when `new` is not forward of the current status."""
    return await conn.fetchrow(
        """
        UPDATE messages SET status = $2, updated_at = now(),
            provider = coalesce($4, provider), provider_message_id = coalesce($5, provider_message_id),
            error_code = coalesce($6, error_code), error_detail = coalesce($7, error_detail)
        WHERE id = $1 AND status = ANY($3::text[])
        RETURNING id, tenant_id, status, trace_id, channel, segments, provider
        """,
        message_id,
        new,
        sources_for(new),
        provider,
        provider_message_id,
        error_code,
        error_detail,
    )


async def message_by_provider_ref(
    conn: Conn, provider: str, provider_message_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, tenant_id, status, trace_id, channel, to_number FROM messages"
        " WHERE provider = $1 AND provider_message_id = $2",
        provider,
        provider_message_id,
    )


async def open_attempt(
    conn: asyncpg.Connection, message_id: uuid.UUID, provider: str
) -> dict[str, Any]:
    """Reuse the last attempt if it never got an outcome (a crash mid-send); else start a new one.

    `reused` tells the caller the provider may already have the request under this key.
    """
    last = await conn.fetchrow(
        "SELECT n, attempt_key, provider, outcome FROM message_attempts WHERE message_id = $1 ORDER BY n DESC LIMIT 1",
        message_id,
    )
    if last is not None and last["outcome"] is None:
        return dict(last) | {"reused": True, "previous": None}
    n = 1 if last is None else last["n"] + 1
    row = await conn.fetchrow(
        """
        INSERT INTO message_attempts (message_id, n, attempt_key, provider) VALUES ($1, $2, $3, $4)
        RETURNING n, attempt_key, provider, outcome
        """,
        message_id,
        n,
        f"{message_id}:{n}",
        provider,
    )
    return dict(row) | {"reused": False, "previous": dict(last) if last is not None else None}


async def close_attempt(
    conn: asyncpg.Connection,
    message_id: uuid.UUID,
    n: int,
    outcome: str,
    *,
    latency_ms: float,
    error: str | None = None,
    provider_message_id: str | None = None,
) -> None:
    await conn.execute(
        """
        UPDATE message_attempts SET finished_at = now(), outcome = $3, latency_ms = $4, error = $5,
                                    provider_message_id = $6
        WHERE message_id = $1 AND n = $2
        """,
        message_id,
        n,
        outcome,
        latency_ms,
        error,
        provider_message_id,
    )


async def record_usage(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    subject: str,
    channel: str,
    unit: str,
    quantity: int,
    provider: str | None,
) -> None:
    await conn.execute(
        """
        INSERT INTO usage_records (tenant_id, subject, channel, unit, quantity, provider)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (subject, unit) DO NOTHING
        """,
        tenant_id,
        subject,
        channel,
        unit,
        quantity,
        provider,
    )


async def usage(conn: Conn, tenant_id: uuid.UUID, start: Any, end: Any) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT u.channel, u.unit, sum(u.quantity)::bigint AS quantity, count(*) AS records,
               coalesce(sum(u.quantity) FILTER (WHERE b.sent_at IS NOT NULL), 0)::bigint
                   AS exported
        FROM usage_records u LEFT JOIN billing_export_batches b ON b.id = u.export_batch
        WHERE u.tenant_id = $1 AND u.recorded_at >= $2 AND u.recorded_at < $3
        GROUP BY u.channel, u.unit ORDER BY u.channel, u.unit
        """,
        tenant_id,
        start,
        end,
    )


async def upsert_template(
    conn: Conn,
    tenant_id: uuid.UUID,
    name: str,
    body: str,
    subject: str | None = None,
    html: str | None = None,
) -> asyncpg.Record:
    """`body` is the SMS text or an email's text part ('' for an HTML-only email)."""
    return await conn.fetchrow(
        """
        INSERT INTO message_templates (tenant_id, name, body, subject, html) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (tenant_id, name) DO UPDATE SET body = EXCLUDED.body, subject = EXCLUDED.subject,
            html = EXCLUDED.html, updated_at = now()
        RETURNING name, body, subject, html, created_at, updated_at, (xmax = 0) AS inserted
        """,
        tenant_id,
        name,
        body,
        subject,
        html,
    )


async def get_template(conn: Conn, tenant_id: uuid.UUID, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT name, body, subject, html, created_at, updated_at FROM message_templates"
        " WHERE tenant_id = $1 AND name = $2",
        tenant_id,
        name,
    )


async def tenant_for_did(conn: Conn, number: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT tenant_id, provider, capabilities FROM dids WHERE number = $1", number
    )


async def did_for_sending(
    conn: Conn, tenant_id: uuid.UUID, channel: str, number: str | None
) -> asyncpg.Record | None:
    """The tenant's DID to send from: the one asked for, else its first DID able to carry `channel`."""
    return await conn.fetchrow(
        """
        SELECT number, provider FROM dids
        WHERE tenant_id = $1 AND $2 = ANY(capabilities) AND ($3::text IS NULL OR number = $3)
        ORDER BY number LIMIT 1
        """,
        tenant_id,
        channel,
        number,
    )


async def park_orphan_receipt(
    conn: Conn,
    provider: str,
    provider_message_id: str,
    status: str,
    error_code: str | None,
    raw: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO orphan_receipts (provider, provider_message_id, status, error_code, raw) VALUES ($1, $2, $3, $4, $5)",
        provider,
        provider_message_id,
        status,
        error_code,
        raw,
    )


async def take_orphan_receipts(
    conn: asyncpg.Connection, provider: str, provider_message_id: str
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        DELETE FROM orphan_receipts WHERE provider = $1 AND provider_message_id = $2
        RETURNING provider, provider_message_id, status, error_code, raw
        """,
        provider,
        provider_message_id,
    )


async def lock_provider_ref(
    conn: asyncpg.Connection, provider: str, provider_message_id: str
) -> None:
    """Serialize a receipt with the dispatch that records its provider id (see orphan_receipts)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{provider}:{provider_message_id}"
    )


async def list_messages(
    conn: Conn,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[Any, Any],
    status: str | None = None,
    to: str | None = None,
    created_after: Any = None,
    created_before: Any = None,
) -> list[asyncpg.Record]:
    """One page newest first, keyed on (created_at, id) after the cursor `after`; `limit`
    rows plus one to tell whether another page follows."""
    return await conn.fetch(
        f"""
        SELECT {MESSAGE_COLUMNS} FROM messages m
        WHERE m.tenant_id = $1
          AND ($3::timestamptz IS NULL OR (m.created_at, m.id) < ($3, $4::uuid))
          AND ($5::text IS NULL OR m.status = $5)
          AND ($6::text IS NULL OR m.to_number = $6)
          AND ($7::timestamptz IS NULL OR m.created_at > $7)
          AND ($8::timestamptz IS NULL OR m.created_at < $8)
        ORDER BY m.created_at DESC, m.id DESC
        LIMIT $2
        """,
        tenant_id,
        limit + 1,
        after[0],
        after[1],
        status,
        to,
        created_after,
        created_before,
    )


async def list_templates(
    conn: Conn, tenant_id: uuid.UUID, *, limit: int, after: str | None
) -> list[asyncpg.Record]:
    """One page of templates by name (their key), `limit` rows plus one."""
    return await conn.fetch(
        """
        SELECT name, body, subject, html, created_at, updated_at FROM message_templates
        WHERE tenant_id = $1 AND ($3::text IS NULL OR name > $3)
        ORDER BY name LIMIT $2
        """,
        tenant_id,
        limit + 1,
        after,
    )
