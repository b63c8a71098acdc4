from __future__ import annotations

from aiohttp import web

from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.pagination import ListQuery
from gateway.http.routing import RouteTable
from gateway.resources import RESOURCES
from gateway.webhooks import service
from gateway.webhooks.schemas import (
    Delivery,
    DeliveryList,
    DeliveryQuery,
    Endpoint,
    EndpointCreated,
    EndpointIn,
    EndpointList,
)

routes = RouteTable(tag="webhooks")
SCOPE = "webhooks:manage"
_BASE = "/v1/webhook-endpoints"


@routes.post(
    _BASE,
    summary="Register a URL for signed event deliveries (the signing secret is shown only here; "
    "send Idempotency-Key to retry safely)",
    scope=SCOPE,
    body=EndpointIn,
    response=EndpointCreated,
    status=201,
    errors=(409,),
)
async def create_endpoint(request: web.Request, body: EndpointIn) -> web.Response:
    res = request.app[RESOURCES]
    key, digest = await idempotency.from_request(request)
    answer = await service.create_endpoint(
        res.db,
        principal_of(request).tenant_id,
        body,
        allow_private=res.settings.webhooks.allow_private_targets,
        idempotency_key=key,
        request_digest=digest,
    )
    return idempotency.respond(answer)


@routes.get(
    _BASE,
    summary="Your webhook endpoints, oldest first (cursor pagination)",
    scope=SCOPE,
    query=ListQuery,
    response=EndpointList,
)
async def list_endpoints(request: web.Request, query: ListQuery) -> EndpointList:
    return await service.list_endpoints(
        request.app[RESOURCES].db, principal_of(request).tenant_id, query
    )


@routes.get(
    _BASE + "/{endpoint_id}",
    summary="One webhook endpoint",
    scope=SCOPE,
    response=Endpoint,
    errors=(404,),
)
async def get_endpoint(request: web.Request) -> Endpoint:
    return await service.get_endpoint(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        request.match_info["endpoint_id"],
    )


@routes.delete(
    _BASE + "/{endpoint_id}",
    summary="Delete a webhook endpoint (pending deliveries are dropped)",
    scope=SCOPE,
    status=204,
    errors=(404,),
)
async def delete_endpoint(request: web.Request) -> web.Response:
    await service.delete_endpoint(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        request.match_info["endpoint_id"],
    )
    return web.Response(status=204)


@routes.post(
    _BASE + "/{endpoint_id}/enable",
    summary="Re-enable an endpoint that was disabled for failing",
    scope=SCOPE,
    response=Endpoint,
    errors=(404,),
)
async def enable_endpoint(request: web.Request) -> Endpoint:
    return await service.enable_endpoint(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        request.match_info["endpoint_id"],
    )


@routes.get(
    _BASE + "/{endpoint_id}/deliveries",
    summary="Deliveries to an endpoint, newest first, with the last response of each",
    scope=SCOPE,
    query=DeliveryQuery,
    response=DeliveryList,
    errors=(404,),
)
async def list_deliveries(request: web.Request, query: DeliveryQuery) -> DeliveryList:
    return await service.list_deliveries(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        request.match_info["endpoint_id"],
        query,
    )


@routes.post(
    _BASE + "/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    summary="Deliver again (a fresh retry window), e.g. after fixing the receiver",
    scope=SCOPE,
    response=Delivery,
    status=202,
    errors=(404, 409),
)
async def redeliver(request: web.Request) -> web.Response:
    delivery = await service.redeliver(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        request.match_info["endpoint_id"],
        request.match_info["delivery_id"],
    )
    return web.Response(
        body=delivery.model_dump_json(), status=202, content_type="application/json"
    )
