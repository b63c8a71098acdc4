from __future__ import annotations

from aiohttp import web

from gateway.http.auth import principal_of
from gateway.http.routing import RouteTable
from gateway.tenants.schemas import WhoAmI

routes = RouteTable(tag="tenants")


@routes.get("/v1/whoami", summary="The tenant and scopes of the calling API key", response=WhoAmI)
async def whoami(request: web.Request) -> WhoAmI:
    p = principal_of(request)
    return WhoAmI(
        tenant_id=p.tenant_id, tenant=p.tenant_name, key_id=p.key_id, scopes=list(p.scopes)
    )
