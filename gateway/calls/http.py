from __future__ import annotations

import uuid

from aiohttp import web

from gateway.calls import lists
from gateway.calls.schemas import (
    BridgeCall,
    Call,
    CallDetail,
    CallList,
    CallQuery,
    PlaceCall,
    Pools,
    VoiceUsage,
    VoiceUsageQuery,
)
from gateway.core.errors import NotFound
from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.middleware import TRACE_ID
from gateway.http.routing import RouteTable, json_response
from gateway.pipeline.calls import VOICE
from gateway.resources import RESOURCES

routes = RouteTable(tag="calls")


def _uuid(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound("no such call", code="call_not_found") from None


@routes.post(
    "/v1/calls",
    summary="Place a call (201: stored and queued; the dial follows, see its status). 429 pool_exhausted with Retry-After when the "
    "pool has no free channel; send Idempotency-Key to retry safely",
    scope="calls:write",
    body=PlaceCall,
    response=Call,
    status=201,
    errors=(409, 422, 429, 503),
)
async def place_call(request: web.Request, body: PlaceCall) -> web.Response:
    principal = principal_of(request)
    key, digest = await idempotency.from_request(request)
    outcome = await request.app[VOICE].pipeline.accept(
        principal.tenant_id,
        principal.key_id,
        body,
        trace_id=request[TRACE_ID],
        idempotency_key=key,
        request_digest=digest,
    )
    ctype = "application/problem+json" if outcome.status >= 400 else "application/json"
    return web.json_response(
        outcome.body, status=outcome.status, content_type=ctype, headers=outcome.headers
    )


@routes.get(
    "/v1/calls",
    summary="Your calls, newest first; filter by status, to and a created_at range "
    "(cursor pagination: pass next_cursor back as ?cursor=)",
    scope="calls:read",
    query=CallQuery,
    response=CallList,
)
async def list_calls(request: web.Request, query: CallQuery) -> CallList:
    return await lists.list_calls(request.app[RESOURCES].db, principal_of(request).tenant_id, query)


@routes.get(
    "/v1/calls/{call_id}",
    summary="A call: status, pool, provider, channel ids, hangup cause, durations, attempts "
    "and its full timeline",
    scope="calls:read",
    response=CallDetail,
    errors=(404,),
)
async def get_call(request: web.Request) -> CallDetail:
    return await request.app[VOICE].service.get_call(
        principal_of(request).tenant_id, _uuid(request.match_info["call_id"])
    )


@routes.post(
    "/v1/calls/{call_id}/hangup",
    summary="Hang up a call (202); a call not dialled yet is canceled, an ended one is unchanged",
    scope="calls:write",
    response=Call,
    status=202,
    errors=(404,),
)
async def hangup_call(request: web.Request) -> web.Response:
    call = await request.app[VOICE].service.request_hangup(
        principal_of(request).tenant_id, _uuid(request.match_info["call_id"])
    )
    return json_response(call, 202)


@routes.post(
    "/v1/calls/{call_id}/bridge",
    summary="Bridge two answered calls on the same provider (202; call.bridged follows)",
    scope="calls:write",
    body=BridgeCall,
    response=Call,
    status=202,
    errors=(404, 409),
)
async def bridge_call(request: web.Request, body: BridgeCall) -> web.Response:
    call = await request.app[VOICE].service.request_bridge(
        principal_of(request).tenant_id, _uuid(request.match_info["call_id"]), body.call_id
    )
    return json_response(call, 202)


@routes.get(
    "/v1/pools",
    summary="The SIP trunk's channel pools: their size, and the channels your calls hold and "
    "your calls waiting in each (never other tenants' traffic)",
    scope="calls:read",
    response=Pools,
)
async def get_pools(request: web.Request) -> Pools:
    return await request.app[VOICE].service.pool_states(principal_of(request).tenant_id)


@routes.get(
    "/v1/usage/voice",
    summary="Metered voice usage in [from, to): answered calls and billable seconds (talk time "
    "rounded up per call), per provider, by the time each call ended",
    scope="usage:read",
    query=VoiceUsageQuery,
    response=VoiceUsage,
)
async def get_voice_usage(request: web.Request, query: VoiceUsageQuery) -> VoiceUsage:
    return await request.app[VOICE].service.voice_usage(
        principal_of(request).tenant_id, query.from_, query.to
    )
