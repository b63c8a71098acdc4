"""DNC routes: /v1/dnc (scope dnc:manage)."""

from __future__ import annotations

from aiohttp import web
from pydantic_core import PydanticCustomError

from gateway.core.errors import ValidationFailed
from gateway.core.phone import normalize_e164
from gateway.dnc import service
from gateway.dnc.schemas import DncDeleteQuery, DncEntryIn, DncEntryList, DncListQuery, DncStatus
from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.routing import RouteTable
from gateway.resources import RESOURCES

routes = RouteTable(tag="dnc")
SCOPE = "dnc:manage"


def _number(request: web.Request) -> str:
    try:
        return normalize_e164(request.match_info["number"])
    except PydanticCustomError as exc:
        raise ValidationFailed(f"number: {exc}", code="invalid_phone_number") from None


@routes.post(
    "/v1/dnc",
    summary="Add (201) or update (200) a number on your do-not-contact list; returns what now "
    "applies to it",
    scope=SCOPE,
    body=DncEntryIn,
    response=DncStatus,
    status=201,
    also=(200,),
    errors=(409,),
)
async def add_entry(request: web.Request, body: DncEntryIn) -> web.Response:
    key, digest = await idempotency.from_request(request)
    answer = await service.add(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        body,
        idempotency_key=key,
        request_digest=digest,
    )
    return idempotency.respond(answer)


@routes.get(
    "/v1/dnc",
    summary="Your own do-not-contact entries, newest first (cursor pagination; the operator's "
    "global lists are not included)",
    scope=SCOPE,
    query=DncListQuery,
    response=DncEntryList,
)
async def list_entries(request: web.Request, query: DncListQuery) -> DncEntryList:
    return await service.list_entries(
        request.app[RESOURCES].db, principal_of(request).tenant_id, query
    )


@routes.get(
    "/v1/dnc/{number}",
    summary="Every active entry (yours and global) for a number, and what it blocks",
    scope=SCOPE,
    response=DncStatus,
    errors=(404,),
)
async def get_entry(request: web.Request) -> DncStatus:
    return await service.lookup(
        request.app[RESOURCES].db, principal_of(request).tenant_id, _number(request)
    )


@routes.delete(
    "/v1/dnc/{number}",
    summary="Remove your entries for a number (all sources, or ?source=); returns what still applies",
    scope=SCOPE,
    query=DncDeleteQuery,
    response=DncStatus,
    errors=(404,),
)
async def delete_entry(request: web.Request, query: DncDeleteQuery) -> DncStatus:
    return await service.remove(
        request.app[RESOURCES].db, principal_of(request).tenant_id, _number(request), query.source
    )
