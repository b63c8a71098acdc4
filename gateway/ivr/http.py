"""IVR routes: /v1/ivr/flows, /v1/ivr/simulate, /v1/ivr/sessions (scopes ivr:read, ivr:write)."""

from __future__ import annotations

from aiohttp import web

from gateway.core.errors import ValidationFailed
from gateway.core.phone import normalize_e164
from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.pagination import ListQuery
from gateway.http.routing import RouteTable
from gateway.ivr import service, twilio
from gateway.ivr.schemas import (
    DidIvr,
    DidIvrIn,
    FlowCreated,
    FlowList,
    FlowOut,
    FlowQuery,
    SessionList,
    SessionOut,
    SimulateIn,
    SimulateOut,
)
from gateway.ivr.twilio import TwilioIvr
from gateway.ivr.wiring import AGENTS, RUNNER
from gateway.providers.twilio.http import _verified
from gateway.resources import RESOURCES
from ivr.flow import Flow

routes = RouteTable(tag="ivr")


@routes.post(
    "/v1/ivr/flows",
    summary="Upload a flow (201): version 1 for a new name, else the next version. A 422 names "
    "the node: flow_unknown_node, flow_unreachable_node, flow_loop_without_input, flow_node_kind",
    scope="ivr:write",
    body=Flow,
    response=FlowCreated,
    status=201,
    errors=(409,),
)
async def create_flow(request: web.Request, body: Flow) -> web.Response:
    key, digest = await idempotency.from_request(request)
    res = request.app[RESOURCES]
    answer = await service.create_flow(
        res.db,
        principal_of(request).tenant_id,
        body,
        bridge_hosts=res.settings.agents.bridge_hosts,
        allow_private=res.settings.webhooks.allow_private_targets,
        idempotency_key=key,
        digest=digest,
    )
    return idempotency.respond(answer)


@routes.get(
    "/v1/ivr/flows",
    summary="Your flows by name, each at its latest version (cursor pagination)",
    scope="ivr:read",
    query=ListQuery,
    response=FlowList,
)
async def list_flows(request: web.Request, query: ListQuery) -> FlowList:
    return await service.list_flows(
        request.app[RESOURCES].db, principal_of(request).tenant_id, query
    )


@routes.get(
    "/v1/ivr/flows/{name}",
    summary="A flow's document (the latest version, or ?version=)",
    scope="ivr:read",
    query=FlowQuery,
    response=FlowOut,
    errors=(404,),
)
async def get_flow(request: web.Request, query: FlowQuery) -> FlowOut:
    return await service.get_flow(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        request.match_info["name"],
        query.version,
    )


@routes.post(
    "/v1/ivr/simulate",
    summary="Run a flow on the sandbox with scripted caller inputs; returns the transcript "
    "(webhook nodes really POST; a transfer is checked by the guardrails, not dialled)",
    scope="ivr:write",
    body=SimulateIn,
    response=SimulateOut,
    errors=(404,),
)
async def simulate(request: web.Request, body: SimulateIn) -> SimulateOut:
    return await service.simulate(request.app[RUNNER], principal_of(request).tenant_id, body)


@routes.get(
    "/v1/ivr/sessions",
    summary="Your ended IVR sessions, newest first (cursor pagination); a live one by its id",
    scope="ivr:read",
    query=ListQuery,
    response=SessionList,
)
async def list_sessions(request: web.Request, query: ListQuery) -> SessionList:
    return await service.list_sessions(
        request.app[RESOURCES].db, principal_of(request).tenant_id, query
    )


@routes.get(
    "/v1/ivr/sessions/{session_id}",
    summary="A session: live (from Redis) or its summary once ended",
    scope="ivr:read",
    response=SessionOut,
    errors=(404,),
)
async def get_session(request: web.Request) -> SessionOut:
    return await service.get_session(
        request.app[RUNNER],
        principal_of(request).tenant_id,
        service.parse_session_id(request.match_info["session_id"]),
    )


@routes.route(
    "PUT",
    "/v1/dids/{number}",
    summary="Route inbound calls to one of your numbers into an IVR flow (null: none)",
    scope="ivr:write",
    body=DidIvrIn,
    response=DidIvr,
    errors=(404,),
)
async def bind_number(request: web.Request, body: DidIvrIn) -> DidIvr:
    try:
        number = normalize_e164(request.match_info["number"])
    except ValueError as exc:  # PydanticCustomError is a ValueError
        raise ValidationFailed(f"number: {exc}", code="invalid_phone_number") from None
    return await service.bind_number(
        request.app[RESOURCES].db, principal_of(request).tenant_id, number, body
    )


def _twilio(request: web.Request) -> TwilioIvr:
    res = request.app[RESOURCES]
    return TwilioIvr(
        request.app[RUNNER],
        res.redis,
        res.settings.http.public_base_url or "",
        request.app[AGENTS],  # type: ignore[arg-type]
        tuple(res.settings.agents.bridge_hosts),
    )


def _xml(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/xml")


@routes.post(
    twilio.INBOUND_PATH,
    summary="Twilio inbound voice webhook (signed): starts the flow bound to the number called "
    "and answers its first TwiML",
    public=True,
    stream="text/xml",
    errors=(403,),
)
async def twilio_ivr_inbound(request: web.Request) -> web.Response:
    form = await _verified(request)
    return _xml(await _twilio(request).inbound({k: form[k] for k in form}))


@routes.post(
    twilio.STEP_PATH,
    summary="Twilio <Gather>/<Record> action (signed): the caller's input, answered with the "
    "next TwiML",
    public=True,
    stream="text/xml",
    errors=(403,),
)
async def twilio_ivr_step(request: web.Request) -> web.Response:
    form = await _verified(request)
    return _xml(await _twilio(request).step(request.query, {k: form[k] for k in form}))


@routes.post(
    twilio.DIAL_PATH,
    summary="Twilio <Dial> action of an IVR transfer (signed): its DialCallStatus ends the "
    "transfer's call record",
    public=True,
    stream="text/xml",
    errors=(403,),
)
async def twilio_ivr_dial(request: web.Request) -> web.Response:
    form = await _verified(request)
    return _xml(await _twilio(request).dial(request.query, {k: form[k] for k in form}))


@routes.post(
    twilio.STATUS_PATH,
    summary="Twilio call status callback for IVR calls (signed): a finished call ends its session",
    public=True,
    stream="text/xml",
    errors=(403,),
)
async def twilio_ivr_status(request: web.Request) -> web.Response:
    form = await _verified(request)
    await _twilio(request).status({k: form[k] for k in form})
    return _xml(twilio.EMPTY)
