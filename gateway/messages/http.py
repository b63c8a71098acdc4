from __future__ import annotations

import uuid
from datetime import datetime

from aiohttp import web

from gateway.core.errors import NotFound
from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.middleware import TRACE_ID
from gateway.http.pagination import ListQuery, decode_cursor, page_of
from gateway.http.routing import RouteTable, json_response
from gateway.messages import repo, service
from gateway.messages.schemas import (
    Message,
    MessageDetail,
    MessageList,
    MessageQuery,
    SendMessage,
    Template,
    TemplateIn,
    TemplateList,
    Trace,
    Usage,
    UsageQuery,
)
from gateway.pipeline.wiring import PIPELINE
from gateway.resources import RESOURCES

routes = RouteTable(tag="messages")


def _uuid(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no such {what}", code=f"{what}_not_found") from None


@routes.post(
    "/v1/messages",
    summary="Send an SMS, WhatsApp message or email (201: stored and queued; the send follows, "
    "see its status; send Idempotency-Key to retry safely)",
    scope="messages:write",
    body=SendMessage,
    response=Message,
    status=201,
    errors=(409, 429, 503),
)
async def send_message(request: web.Request, body: SendMessage) -> web.Response:
    principal = principal_of(request)
    key, digest = await idempotency.from_request(request)
    outcome = await request.app[PIPELINE].accept(
        principal, body, trace_id=request[TRACE_ID], idempotency_key=key, request_digest=digest
    )
    ctype = "application/problem+json" if outcome.status >= 400 else "application/json"
    return json_response(outcome.body, outcome.status, content_type=ctype, headers=outcome.headers)


@routes.get(
    "/v1/messages",
    summary="Your messages, newest first; filter by status, to and a created_at range "
    "(cursor pagination: pass next_cursor back as ?cursor=)",
    scope="messages:read",
    query=MessageQuery,
    response=MessageList,
)
async def list_messages(request: web.Request, query: MessageQuery) -> MessageList:
    after = decode_cursor("messages", query.cursor, (datetime, uuid.UUID))
    rows = await repo.list_messages(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        limit=query.limit,
        after=after,
        status=query.status,
        to=query.to,
        created_after=query.created_after,
        created_before=query.created_before,
    )
    page, cursor = page_of("messages", rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return MessageList(data=[service.message_from_row(r) for r in page], next_cursor=cursor)


@routes.get(
    "/v1/messages/{message_id}",
    summary="A message with its attempts and full timeline",
    scope="messages:read",
    response=MessageDetail,
    errors=(404,),
)
async def get_message(request: web.Request) -> MessageDetail:
    message_id = _uuid(request.match_info["message_id"], "message")
    return await service.get_message(
        request.app[RESOURCES].db, principal_of(request).tenant_id, message_id
    )


@routes.get(
    "/v1/traces/{trace_id}",
    summary="Everything that happened under one trace id",
    scope="messages:read",
    response=Trace,
    errors=(404,),
)
async def get_trace(request: web.Request) -> Trace:
    trace_id = request.match_info["trace_id"]
    if len(trace_id) > 64:
        raise NotFound("no such trace", code="trace_not_found")
    return await service.get_trace(
        request.app[RESOURCES].db, principal_of(request).tenant_id, trace_id
    )


@routes.post(
    "/v1/templates",
    summary="Create (201) or replace (200) a message template ({{ name }} placeholders)",
    scope="messages:write",
    body=TemplateIn,
    response=Template,
    status=201,
    also=(200,),
)
async def put_template(request: web.Request, body: TemplateIn) -> web.Response:
    row = await repo.upsert_template(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        body.name,
        body.body or body.text or "",
        body.subject,
        body.html,
    )
    return json_response(service.template_from_row(row), 201 if row["inserted"] else 200)


@routes.get(
    "/v1/templates",
    summary="Your message templates by name (cursor pagination)",
    scope="messages:read",
    query=ListQuery,
    response=TemplateList,
)
async def list_templates(request: web.Request, query: ListQuery) -> TemplateList:
    (after,) = decode_cursor("templates", query.cursor, (str,))
    rows = await repo.list_templates(
        request.app[RESOURCES].db, principal_of(request).tenant_id, limit=query.limit, after=after
    )
    page, cursor = page_of("templates", rows, query.limit, lambda r: (r["name"],))
    return TemplateList(data=[service.template_from_row(r) for r in page], next_cursor=cursor)


@routes.get(
    "/v1/templates/{name}",
    summary="A message template and the variables it needs",
    scope="messages:read",
    response=Template,
    errors=(404,),
)
async def get_template(request: web.Request) -> Template:
    row = await repo.get_template(
        request.app[RESOURCES].db, principal_of(request).tenant_id, request.match_info["name"]
    )
    if row is None:
        raise NotFound("no such template", code="template_not_found")
    return service.template_from_row(row)


@routes.get(
    "/v1/usage",
    summary="Metered usage (SMS segments, WhatsApp messages, emails, voice calls and seconds) "
    "in [from, to), and what of it was exported to Stripe",
    scope="usage:read",
    query=UsageQuery,
    response=Usage,
)
async def get_usage(request: web.Request, query: UsageQuery) -> Usage:
    res = request.app[RESOURCES]
    return await service.usage(
        res.db,
        principal_of(request).tenant_id,
        query.from_,
        query.to,
        res.settings.billing.stripe,
    )
