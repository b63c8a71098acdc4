"""SQL for IVR: flows (versioned, immutable) and session summaries."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from ivr.engine import Session


async def insert_flow(
    conn: asyncpg.Connection,
    flow_id: uuid.UUID,
    tenant_id: uuid.UUID,
    name: str,
    document: dict[str, Any],
    new_secret: str,
) -> asyncpg.Record:
    """The next version of `name` (1 for a new name). An advisory lock per (tenant, name)
    makes concurrent uploads of one name take consecutive versions instead of colliding."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2, 16))",
        str(tenant_id),
        name,
    )
    return await conn.fetchrow(
        """
        WITH prev AS (
            SELECT version, signing_secret FROM ivr_flows
             WHERE tenant_id = $2 AND name = $3 ORDER BY version DESC LIMIT 1
        )
        INSERT INTO ivr_flows (id, tenant_id, name, version, document, signing_secret)
        VALUES ($1, $2, $3, COALESCE((SELECT version FROM prev), 0) + 1, $4,
                COALESCE((SELECT signing_secret FROM prev), $5))
        RETURNING *
        """,
        flow_id,
        tenant_id,
        name,
        document,
        new_secret,
    )


async def latest_flow(db: Any, tenant_id: uuid.UUID, name: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM ivr_flows WHERE tenant_id = $1 AND name = $2 ORDER BY version DESC LIMIT 1",
        tenant_id,
        name,
    )


async def flow_version(
    db: Any, tenant_id: uuid.UUID, name: str, version: int
) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM ivr_flows WHERE tenant_id = $1 AND name = $2 AND version = $3",
        tenant_id,
        name,
        version,
    )


async def flow_by_id(db: Any, flow_id: uuid.UUID) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM ivr_flows WHERE id = $1", flow_id)


async def list_flows(
    db: Any, tenant_id: uuid.UUID, *, limit: int, after: str | None
) -> list[asyncpg.Record]:
    """One page of names (their key), each at its latest version, `limit` rows plus one."""
    return await db.fetch(
        """
        SELECT DISTINCT ON (name) id, name, version, created_at, version AS versions
          FROM ivr_flows WHERE tenant_id = $1 AND ($3::text IS NULL OR name > $3)
         ORDER BY name, version DESC
         LIMIT $2
        """,
        tenant_id,
        limit + 1,
        after,
    )


async def insert_summary(conn: asyncpg.Connection, s: Session, ended_at: Any) -> None:
    await conn.execute(
        """
        INSERT INTO ivr_sessions (id, tenant_id, flow_id, flow_name, flow_version, transport,
                                  caller, called, started_at, ended_at, end_reason, last_node,
                                  steps, variables, recordings, transcript)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::timestamptz, $10, $11, $12, $13, $14,
                $15::text::jsonb, $16::text::jsonb)
        ON CONFLICT (id) DO NOTHING
        """,
        uuid.UUID(s.id),
        uuid.UUID(s.tenant_id),
        uuid.UUID(s.flow_id),
        s.flow_name,
        s.version,
        s.transport,
        s.caller,
        s.called,
        s.started_at,
        ended_at,
        s.ended or "unknown",
        s.node,
        s.steps,
        s.variables,
        json.dumps(list(s.recordings)),
        json.dumps(list(s.transcript)),
    )


async def list_sessions(
    db: Any, tenant_id: uuid.UUID, *, limit: int, after: tuple[Any, uuid.UUID | None]
) -> list[asyncpg.Record]:
    """One page of ended sessions, newest start first (key: started_at, id), `limit` + 1."""
    return await db.fetch(
        """
        SELECT id, flow_name, flow_version, transport, caller, called, end_reason, last_node,
               started_at, ended_at, steps
          FROM ivr_sessions
         WHERE tenant_id = $1
           AND ($2::timestamptz IS NULL OR (started_at, id) < ($2, $3::uuid))
         ORDER BY started_at DESC, id DESC
         LIMIT $4
        """,
        tenant_id,
        after[0],
        after[1],
        limit + 1,
    )


async def summary(db: Any, tenant_id: uuid.UUID, session_id: uuid.UUID) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM ivr_sessions WHERE tenant_id = $1 AND id = $2", tenant_id, session_id
    )


async def bind_number(
    db: Any, tenant_id: uuid.UUID, number: str, flow_name: str | None
) -> asyncpg.Record | None:
    """Set (or clear, with None) the flow of one of the tenant's DIDs; None if not theirs."""
    return await db.fetchrow(
        "UPDATE dids SET ivr_flow = $3 WHERE number = $2 AND tenant_id = $1"
        " RETURNING number, ivr_flow",
        tenant_id,
        number,
        flow_name,
    )


async def flow_for_number(db: Any, number: str) -> asyncpg.Record | None:
    """The latest version of the flow bound to a DID (an inbound call's route), or None."""
    return await db.fetchrow(
        """
        SELECT f.* FROM dids d
          JOIN ivr_flows f ON f.tenant_id = d.tenant_id AND f.name = d.ivr_flow
         WHERE d.number = $1
         ORDER BY f.version DESC LIMIT 1
        """,
        number,
    )


# --- IVR calls holding a pool permit (rebuilt into the pools after Redis loses them) ---------


async def insert_live(conn: asyncpg.Connection, holder: str, s: Session, pool: str) -> None:
    await conn.execute(
        "INSERT INTO ivr_live (holder, session_id, tenant_id, pool) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (holder) DO NOTHING",
        holder,
        uuid.UUID(s.id),
        uuid.UUID(s.tenant_id),
        pool,
    )


async def end_live(db: Any, holder: str) -> None:
    """The call gave its permit back (after its session ended: a bridge still holds one)."""
    await db.execute("DELETE FROM ivr_live WHERE holder = $1", holder)


async def is_live(db: Any, session_id: str) -> bool:
    """Is the session a call in progress (started, not summarised)? Lets the worker driving it
    restore it after Redis lost it."""
    return bool(
        await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ivr_live WHERE session_id = $1)"
            " AND NOT EXISTS (SELECT 1 FROM ivr_sessions WHERE id = $1)",
            uuid.UUID(session_id),
        )
    )


async def live_holders(db: Any, max_age: float) -> list[asyncpg.Record]:
    """IVR calls holding a permit, oldest first (a row older than `max_age` seconds is a call
    whose every worker died and whose session lapsed: nobody will end it, it holds nothing)."""
    return await db.fetch(
        "SELECT holder, pool FROM ivr_live"
        " WHERE started_at > now() - make_interval(secs => $1) ORDER BY started_at, holder",
        max_age,
    )
