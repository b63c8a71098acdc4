from __future__ import annotations

from datetime import datetime

from aiohttp import web

from gateway.http.auth import principal_of
from gateway.http.pagination import ListQuery, decode_cursor, page_of
from gateway.http.routing import RouteTable
from gateway.resources import RESOURCES
from gateway.tenants import repo
from gateway.tenants.schemas import ApiKey, ApiKeyList, WhoAmI

routes = RouteTable(tag="tenants")


@routes.get("/v1/whoami", summary="The tenant and scopes of the calling API key", response=WhoAmI)
async def whoami(request: web.Request) -> WhoAmI:
    p = principal_of(request)
    return WhoAmI(
        tenant_id=p.tenant_id, tenant=p.tenant_name, key_id=p.key_id, scopes=list(p.scopes)
    )


@routes.get(
    "/v1/keys",
    summary="Your tenant's API keys, revoked ones too, newest first (never a secret)",
    scope="keys:read",
    query=ListQuery,
    response=ApiKeyList,
)
async def list_keys(request: web.Request, query: ListQuery) -> ApiKeyList:
    after = decode_cursor("keys", query.cursor, (datetime, str))
    rows = await repo.list_keys(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        limit=query.limit,
        after=after,  # type: ignore[arg-type]
    )
    page, cursor = page_of("keys", rows, query.limit, lambda r: (r["created_at"], r["key_id"]))
    return ApiKeyList(data=[ApiKey(**dict(r)) for r in page], next_cursor=cursor)
