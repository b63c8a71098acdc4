"""IVR: upload and read flows, simulate a call on the sandbox transport, read a session.

A flow upload is validated twice: its shape by pydantic at the edge (ivr.flow.Flow), its graph
here (ivr.flow.check_graph), each problem a 422 with a stable code that names the node. Every
upload of a name is a new immutable version; a session keeps the version it started with.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from gateway.core.errors import NotFound, ValidationFailed
from gateway.core.ids import new_id
from gateway.http import idempotency
from gateway.http.pagination import ListQuery, decode_cursor, page_of
from gateway.ivr.schemas import (
    DidIvr,
    DidIvrIn,
    FlowCreated,
    FlowList,
    FlowOut,
    FlowSummary,
    SessionList,
    SessionOut,
    SessionSummary,
    SimulateIn,
    SimulateOut,
)
from gateway.webhooks import ssrf
from gateway.webhooks.signing import new_secret
from ivr import repo
from ivr.engine import Session
from ivr.flow import (
    Flow,
    bridge_allowed,
    bridges,
    check_graph,
    transfer_callers,
    webhook_urls,
)
from ivr.runner import FlowRunner
from ivr.sandbox import simulate as run_simulation

FLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def validate_flow(flow: Flow, bridge_hosts: list[str]) -> None:
    """The graph checks; the first problem is the 422, all of them are in `errors`. Then the
    bridges: a bridge_to may only reach an agent host (`agents.bridge_hosts`)."""
    problems = check_graph(flow)
    if problems:
        first = problems[0]
        raise ValidationFailed(
            first.detail,
            code=first.code,
            node=first.node,
            errors=[{"code": p.code, "node": p.node, "message": p.detail} for p in problems],
        )
    for node, uri in bridges(flow):
        if not bridge_allowed(uri, bridge_hosts):
            raise ValidationFailed(
                f"node {node!r}: bridge_to may only reach {', '.join(bridge_hosts) or 'no host'}"
                " (agents.bridge_hosts)",
                code="bridge_target_not_allowed",
                node=node,
            )


async def _own_callers(db: asyncpg.Pool, tenant_id: uuid.UUID, flow: Flow) -> None:
    """A transfer's `from` is a caller id: only one of your own numbers (no spoofing)."""
    named = transfer_callers(flow)
    if not named:
        return
    ours = {
        r["number"]
        for r in await db.fetch(
            "SELECT number FROM dids WHERE tenant_id = $1 AND number = ANY($2::text[])",
            tenant_id,
            [number for _, number in named],
        )
    }
    for node, number in named:
        if number not in ours:
            raise ValidationFailed(
                f"node {node!r}: transfer from {number} is not one of your numbers",
                code="transfer_from_not_yours",
                node=node,
            )


async def create_flow(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    flow: Flow,
    *,
    bridge_hosts: list[str],
    allow_private: bool = False,
    idempotency_key: str | None = None,
    digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    validate_flow(flow, bridge_hosts)
    await _own_callers(db, tenant_id, flow)
    for node, url in webhook_urls(flow):  # checked again on every request (the resolver)
        try:
            await ssrf.check_url(url, allow_private=allow_private)
        except ssrf.TargetRefused as exc:
            raise ValidationFailed(
                f"node {node!r}: webhook url refused: {exc}", code="webhook_url_refused", node=node
            ) from None
    document = flow.model_dump(mode="json", by_alias=True, exclude_none=True)
    if idempotency_key is not None:
        replay = await idempotency.lookup(db, tenant_id, idempotency_key, digest)
        if replay is not None:
            return replay
    async with db.acquire() as conn, conn.transaction():
        if idempotency_key is not None:
            replay = await idempotency.claim(
                conn, tenant_id, idempotency_key, "POST", "/v1/ivr/flows", digest
            )
            if replay is not None:
                return replay
        row = await repo.insert_flow(conn, new_id(), tenant_id, flow.name, document, new_secret())
        body = FlowCreated(
            id=row["id"],
            name=row["name"],
            version=row["version"],
            signing_secret=row["signing_secret"],
        ).model_dump(mode="json")
        if idempotency_key is not None:
            await idempotency.record(conn, tenant_id, idempotency_key, 201, body)
    return 201, body


async def list_flows(db: asyncpg.Pool, tenant_id: uuid.UUID, query: ListQuery) -> FlowList:
    (after,) = decode_cursor("ivr_flows", query.cursor, (str,))
    rows = await repo.list_flows(db, tenant_id, limit=query.limit, after=after)
    page, cursor = page_of("ivr_flows", rows, query.limit, lambda r: (r["name"],))
    return FlowList(data=[FlowSummary(**dict(r)) for r in page], next_cursor=cursor)


async def flow_row(
    db: asyncpg.Pool, tenant_id: uuid.UUID, name: str, version: int | None
) -> asyncpg.Record:
    # (the detail does not echo the name: a 404 says nothing of what exists)
    if not FLOW_NAME.fullmatch(name):  # a name no upload can have (also: NUL, bad UTF-8)
        raise NotFound("no such IVR flow", code="ivr_flow_not_found")
    if version is None:
        row = await repo.latest_flow(db, tenant_id, name)
    else:
        row = await repo.flow_version(db, tenant_id, name, version)
    if row is None:
        which = "no such IVR flow" if version is None else "no such IVR flow version"
        raise NotFound(which, code="ivr_flow_not_found")
    return row


async def get_flow(
    db: asyncpg.Pool, tenant_id: uuid.UUID, name: str, version: int | None
) -> FlowOut:
    row = await flow_row(db, tenant_id, name, version)
    return FlowOut(**{k: row[k] for k in FlowOut.model_fields})


async def simulate(runner: FlowRunner, tenant_id: uuid.UUID, body: SimulateIn) -> SimulateOut:
    if body.flow is not None:
        row = await flow_row(runner.db, tenant_id, body.flow, body.version)
    elif body.to is None:
        raise ValidationFailed("give flow, or to (a number of yours bound to a flow)")
    else:  # an inbound call to one of your DIDs, routed as Asterisk and Twilio calls are
        row = await repo.flow_for_number(runner.db, body.to)
        if row is None or row["tenant_id"] != tenant_id:
            raise NotFound("not a number of yours bound to a flow", code="did_not_found")
    session, left = await run_simulation(
        runner, row, caller=body.from_, called=body.to, inputs=body.inputs
    )
    out = _live(session)
    return SimulateOut(**out.model_dump(by_alias=True), inputs_left=left)


def _live(s: Session) -> SessionOut:
    return SessionOut(
        id=uuid.UUID(s.id),
        status="ended" if s.ended else "active",
        flow=s.flow_name,
        version=s.version,
        transport=s.transport,
        from_=s.caller,
        to=s.called,
        node=s.node,
        waiting=s.waiting,
        end_reason=s.ended,
        started_at=datetime.fromisoformat(s.started_at),
        steps=s.steps,
        variables=s.variables,
        recordings=list(s.recordings),
        transcript=list(s.transcript),
    )


async def list_sessions(db: asyncpg.Pool, tenant_id: uuid.UUID, query: ListQuery) -> SessionList:
    """Ended sessions (their summaries), newest first; a live one is read by its id."""
    after = decode_cursor("ivr_sessions", query.cursor, (datetime, uuid.UUID))
    rows = await repo.list_sessions(db, tenant_id, limit=query.limit, after=after)
    page, cursor = page_of("ivr_sessions", rows, query.limit, lambda r: (r["started_at"], r["id"]))
    return SessionList(
        data=[
            SessionSummary(
                id=r["id"],
                flow=r["flow_name"],
                version=r["flow_version"],
                transport=r["transport"],
                from_=r["caller"],
                to=r["called"],
                end_reason=r["end_reason"],
                last_node=r["last_node"],
                started_at=r["started_at"],
                ended_at=r["ended_at"],
                steps=r["steps"],
            )
            for r in page
        ],
        next_cursor=cursor,
    )


def parse_session_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("no such IVR session", code="ivr_session_not_found") from None


async def get_session(
    runner: FlowRunner, tenant_id: uuid.UUID, session_id: uuid.UUID
) -> SessionOut:
    """A live session from Redis, else the summary of an ended one from PostgreSQL."""
    live = await runner.store.load(str(session_id))
    if live is not None and live.tenant_id == str(tenant_id):
        return _live(live)
    row = await repo.summary(runner.db, tenant_id, session_id)
    if row is None:
        raise NotFound("no such IVR session", code="ivr_session_not_found")
    return SessionOut(
        id=row["id"],
        status="ended",
        flow=row["flow_name"],
        version=row["flow_version"],
        transport=row["transport"],
        from_=row["caller"],
        to=row["called"],
        node=row["last_node"],
        end_reason=row["end_reason"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        steps=row["steps"],
        variables=row["variables"],
        recordings=row["recordings"],
        transcript=row["transcript"],
    )


async def bind_number(
    db: asyncpg.Pool, tenant_id: uuid.UUID, number: str, body: DidIvrIn
) -> DidIvr:
    """Route inbound calls to one of your DIDs into a flow (by name: new versions apply to the
    next call). The flow must exist; the DID must be yours (the operator provisions DIDs)."""
    if body.ivr_flow is not None:
        await flow_row(db, tenant_id, body.ivr_flow, None)
    row = await repo.bind_number(db, tenant_id, number, body.ivr_flow)
    if row is None:
        raise NotFound("not one of your numbers", code="did_not_found")
    return DidIvr(number=row["number"], ivr_flow=row["ivr_flow"])
