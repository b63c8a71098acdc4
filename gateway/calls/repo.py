"""SQL for calls and their attempts. Every API read is filtered by tenant."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gateway.calls.states import FINAL, STAMPS, sources_for

Conn = asyncpg.Connection | asyncpg.Pool

CALL_COLUMNS = """
    c.id, c.tenant_id, c.trace_id, c.direction, c.to_number AS "to", c.from_number AS "from",
    c.purpose, c.status, c.pool, c.provider, c.provider_call_id, c.attempt_n, c.channel,
    c.ring_timeout, c.on_answer, c.amd, c.on_machine, c.amd_result, c.amd_detail, c.agent,
    c.bridged_with, c.hangup_cause, c.hangup_cause_text, c.sip_code, c.sip_code_source,
    c.error_code, c.alive_at,
    c.error_detail, c.send_at, c.metadata, c.created_at, c.updated_at, c.dialing_at,
    c.ringing_at, c.answered_at, c.bridged_at, c.hangup_requested_at, c.ended_at,
    c.max_duration, c.recipient_state AS state
"""

_FINAL = sorted(FINAL)
NOW = object()  # update_call(x_at=NOW): stamp the column once (keeps the first time)
LATEST = object()  # update_call(x_at=LATEST): move the column forward to now()


async def insert_call(conn: asyncpg.Connection, row: dict[str, Any]) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""
        INSERT INTO calls AS c (id, tenant_id, to_number, from_number, purpose, status, pool,
                                provider, ring_timeout, on_answer, amd, on_machine, error_code,
                                error_detail, send_at, trace_id, metadata, max_duration,
                                recipient_state)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18, $19)
        RETURNING {CALL_COLUMNS}
        """,
        row["id"],
        row["tenant_id"],
        row["to"],
        row["from"],
        row["purpose"],
        row["status"],
        row["pool"],
        row["provider"],
        row["ring_timeout"],
        row["on_answer"],
        row["amd"],
        row["on_machine"],
        row.get("error_code"),
        row.get("error_detail"),
        row.get("send_at"),
        row["trace_id"],
        row.get("metadata", {}),
        row.get("max_duration"),
        row.get("state"),
    )


async def call_detail(
    conn: Conn, tenant_id: uuid.UUID, call_id: uuid.UUID
) -> asyncpg.Record | None:
    """The call, its attempts and its whole timeline in one query."""
    return await conn.fetchrow(
        f"""
        SELECT {CALL_COLUMNS},
            coalesce((SELECT json_agg(row_to_json(a) ORDER BY a.n) FROM (
                SELECT n, provider, attempt_key, started_at, finished_at, outcome, error, latency_ms,
                       provider_call_id
                FROM call_attempts WHERE call_id = c.id) a), '[]'::json) AS attempts,
            coalesce((SELECT json_agg(json_build_object('id', e.id, 'seq', e.seq, 'type', e.type,
                                                        'at', e.created_at, 'data', e.data)
                                      ORDER BY e.id)
                      FROM events e WHERE e.tenant_id = c.tenant_id AND e.subject = c.id::text),
                     '[]'::json) AS timeline
        FROM calls c WHERE c.tenant_id = $1 AND c.id = $2
        """,
        tenant_id,
        call_id,
    )


async def get_call(
    conn: Conn, call_id: uuid.UUID, *, tenant_id: uuid.UUID | None = None, lock: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {CALL_COLUMNS} FROM calls c
        WHERE c.id = $1 AND ($2::uuid IS NULL OR c.tenant_id = $2)
        {"FOR UPDATE" if lock else ""}
        """,
        call_id,
        tenant_id,
    )


async def call_by_attempt_key(
    conn: asyncpg.Connection, attempt_key: str
) -> tuple[asyncpg.Record, int] | None:
    """The call an attempt key belongs to (row locked) and that attempt's number."""
    row = await conn.fetchrow(
        "SELECT call_id, n FROM call_attempts WHERE attempt_key = $1", attempt_key
    )
    if row is None:
        return None
    call = await get_call(conn, row["call_id"], lock=True)
    return (call, row["n"]) if call is not None else None


async def move_status(
    conn: asyncpg.Connection,
    call_id: uuid.UUID,
    new: str,
    *,
    ended_at: Any = None,
    **fields: Any,
) -> asyncpg.Record | None:
    """Compare-and-set forward move that also stamps the step's time and sets `fields`
    (only where given); None when `new` is not forward of the current status. A live step
    also stamps `alive_at` (we know the call is up now); `ended_at` (a SQL expression over the
    row, e.g. ALIVE_END) dates a final step other than now: an end we did not observe."""
    allowed = {
        "provider",
        "provider_call_id",
        "channel",
        "hangup_cause",
        "hangup_cause_text",
        "sip_code",
        "sip_code_source",
        "error_code",
        "error_detail",
        "send_at",
    }
    sets = ["status = $2", "updated_at = now()"]
    args: list[Any] = [call_id, new, sources_for(new)]
    for name, value in fields.items():
        if name not in allowed:
            raise ValueError(f"not a call field: {name}")
        if value is None:
            continue
        args.append(value)
        sets.append(f"{name} = ${len(args)}")
    stamps = [STAMPS[new]] if new in STAMPS else []
    if new in ("ringing", "answered"):  # it was dialling, whether or not we saw that step
        stamps.append("dialing_at")
    for stamp in stamps:
        when = ended_at if stamp == "ended_at" and ended_at is not None else "now()"
        sets.append(f"{stamp} = coalesce({stamp}, {when})")
    if new in ("dialing", "ringing", "answered"):
        sets.append("alive_at = greatest(alive_at, now())")
    return await conn.fetchrow(
        f"""
        UPDATE calls c SET {", ".join(sets)}
        WHERE c.id = $1 AND c.status = ANY($3::text[])
        RETURNING {CALL_COLUMNS}
        """,
        *args,
    )


# An end nobody observed: the last moment we knew the call alive (never before its answer),
# else now. For move_status(ended_at=...) and close paths.
ALIVE_END = "coalesce(greatest(c.alive_at, c.answered_at), now())"


async def mark_alive(conn: Conn, provider: str, attempt_keys: list[str], ago: float = 0.0) -> int:
    """The calls of these attempts (current attempts only) were known up `ago` seconds ago
    (a duration: the database's clock dates it)."""
    status = await conn.execute(
        """
        UPDATE calls c
        SET alive_at = greatest(c.alive_at, now() - make_interval(secs => greatest($3, 0)))
        FROM call_attempts a
        WHERE a.attempt_key = ANY($2::text[]) AND a.call_id = c.id AND a.n = c.attempt_n
          AND c.provider = $1 AND c.status IN ('dialing', 'ringing', 'answered')
        """,
        provider,
        attempt_keys,
        float(ago),
    )
    return int(status.split()[-1])


async def update_call(conn: asyncpg.Connection, call_id: uuid.UUID, **fields: Any) -> None:
    """Set columns that are not the status (channel, amd, agent, bridged_at …)."""
    if not fields:
        return
    sets = ["updated_at = now()"]
    args: list[Any] = [call_id]
    for name, value in fields.items():
        if not name.isidentifier():
            raise ValueError(name)
        if value is NOW:
            sets.append(f"{name} = coalesce({name}, now())")
            continue
        if value is LATEST:
            sets.append(f"{name} = greatest({name}, now())")
            continue
        args.append(value)
        sets.append(f"{name} = ${len(args)}")
    await conn.execute(f"UPDATE calls SET {', '.join(sets)} WHERE id = $1", *args)


async def open_attempt(
    conn: asyncpg.Connection, call_id: uuid.UUID, provider: str, attempt_key_for: Any
) -> dict[str, Any]:
    """Reuse the last attempt if it never got an outcome (a crash or an ambiguous failure
    mid-originate: the provider may have the call under that key); else start a new one."""
    last = await conn.fetchrow(
        """
        SELECT n, attempt_key, provider, outcome FROM call_attempts
        WHERE call_id = $1 ORDER BY n DESC LIMIT 1
        """,
        call_id,
    )
    if last is not None and last["outcome"] is None:
        return dict(last) | {"reused": True}
    n = 1 if last is None else last["n"] + 1
    row = await conn.fetchrow(
        """
        INSERT INTO call_attempts (call_id, n, attempt_key, provider) VALUES ($1, $2, $3, $4)
        RETURNING n, attempt_key, provider, outcome
        """,
        call_id,
        n,
        attempt_key_for(call_id, n),
        provider,
    )
    await conn.execute(
        # A new attempt has no channel yet: the last one's name says nothing about it.
        "UPDATE calls SET attempt_n = $2, provider = $3, channel = NULL, updated_at = now()"
        " WHERE id = $1",
        call_id,
        n,
        provider,
    )
    return dict(row) | {"reused": False}


async def close_attempt(
    conn: asyncpg.Connection,
    call_id: uuid.UUID,
    n: int,
    outcome: str,
    *,
    latency_ms: float | None = None,
    error: str | None = None,
    provider_call_id: str | None = None,
    only_open: bool = False,
) -> bool:
    status = await conn.execute(
        f"""
        UPDATE call_attempts SET finished_at = coalesce(finished_at, now()), outcome = $3,
               latency_ms = coalesce($4, latency_ms), error = coalesce($5, error),
               provider_call_id = coalesce($6, provider_call_id)
        WHERE call_id = $1 AND n = $2 {"AND outcome IS NULL" if only_open else ""}
        """,
        call_id,
        n,
        outcome,
        latency_ms,
        error,
        provider_call_id,
    )
    return status == "UPDATE 1"


async def attempts(conn: Conn, call_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT n, provider, attempt_key, outcome FROM call_attempts WHERE call_id = $1 ORDER BY n",
        call_id,
    )


async def live_on_provider(conn: Conn, provider: str) -> list[asyncpg.Record]:
    """Calls a provider should have up now (or may have: an originate in flight), with their
    current attempt's key and age."""
    return await conn.fetch(
        f"""
        SELECT {CALL_COLUMNS}, a.attempt_key, a.started_at AS attempt_started_at,
               a.outcome AS attempt_outcome
        FROM calls c JOIN call_attempts a ON a.call_id = c.id AND a.n = c.attempt_n
        WHERE c.provider = $1 AND c.status IN ('queued', 'dialing', 'ringing', 'answered')
          AND (a.outcome IS NULL OR a.outcome = 'originated')
        """,
        provider,
    )


async def unfinished_call_ids(conn: Conn) -> list[str]:
    """Every call that may hold a pool permit (anything not final)."""
    rows = await conn.fetch("SELECT id::text FROM calls WHERE status <> ALL($1::text[])", _FINAL)
    return [r["id"] for r in rows]


async def permit_holders(conn: Conn) -> list[asyncpg.Record]:
    """Calls that may hold a pool permit, oldest first, and whether they surely do (`live`):
    on the trunk (dialing, ringing, answered) or being dialled (queued with an attempt that
    has no outcome yet: the Originate may be on its way). Other queued calls may or may not
    hold one (a campaign call queues without)."""
    return await conn.fetch(
        """
        SELECT c.id::text AS id, c.pool,
            (c.status <> 'queued' OR EXISTS (
                SELECT 1 FROM call_attempts a
                WHERE a.call_id = c.id AND a.n = c.attempt_n AND a.outcome IS NULL)) AS live
        FROM calls c
        WHERE c.status IN ('queued', 'dialing', 'ringing', 'answered')
        ORDER BY c.created_at, c.id
        """
    )


async def live_calls(conn: Conn) -> list[asyncpg.Record]:
    """Calls that hold a channel now (for lease renewal)."""
    return await conn.fetch(
        "SELECT id, tenant_id, trace_id, pool FROM calls WHERE status IN ('dialing', 'ringing', 'answered')"
    )


async def calls_of_tenant(conn: Conn, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these call ids are the tenant's (pool holders are bare call ids in Redis)."""
    rows = await conn.fetch(
        "SELECT id FROM calls WHERE tenant_id = $1 AND id = ANY($2::uuid[])", tenant_id, ids
    )
    return {r["id"] for r in rows}


# Voice usage rows in usage_records (shared with messaging): channel 'voice', one row per
# answered call and unit. The call id is the subject, so UNIQUE (subject, unit) makes metering
# a call twice (a report re-applied, reconcile racing a late Hangup) a no-op.
VOICE_CALL_UNIT = "voice_call"
VOICE_SECOND_UNIT = "voice_second"


async def record_voice_usage(conn: asyncpg.Connection, call_id: uuid.UUID) -> None:
    """Meter an ended call: 1 call and its talk time rounded up to the second, dated by its
    end (a call counts in the period it ended in). Unanswered calls are not billable."""
    await conn.execute(
        """
        INSERT INTO usage_records
            (tenant_id, subject, channel, unit, quantity, provider, recorded_at)
        SELECT c.tenant_id, c.id::text, 'voice', u.unit, u.quantity, c.provider, c.ended_at
        FROM calls c, LATERAL (VALUES
            ($2::text, 1),
            ($3::text, ceil(extract(epoch FROM c.ended_at - c.answered_at))::integer)
        ) AS u (unit, quantity)
        WHERE c.id = $1 AND c.answered_at IS NOT NULL AND c.ended_at IS NOT NULL
        ON CONFLICT (subject, unit) DO NOTHING
        """,
        call_id,
        VOICE_CALL_UNIT,
        VOICE_SECOND_UNIT,
    )


async def voice_usage(
    conn: Conn, tenant_id: uuid.UUID, start: Any, end: Any
) -> list[asyncpg.Record]:
    """Calls and billable seconds per provider in [start, end)."""
    return await conn.fetch(
        """
        SELECT coalesce(provider, 'unknown') AS provider,
               coalesce(sum(quantity) FILTER (WHERE unit = $4), 0)::bigint AS calls,
               coalesce(sum(quantity) FILTER (WHERE unit = $5), 0)::bigint AS billable_seconds
        FROM usage_records
        WHERE tenant_id = $1 AND channel = 'voice' AND recorded_at >= $2 AND recorded_at < $3
        GROUP BY 1 ORDER BY 1
        """,
        tenant_id,
        start,
        end,
        VOICE_CALL_UNIT,
        VOICE_SECOND_UNIT,
    )
