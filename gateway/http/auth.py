"""Bearer-key authentication for declared routes (see routing.Endpoint)."""

from __future__ import annotations

from aiohttp import web

from gateway.core import scopes
from gateway.core.errors import Forbidden, Unauthorized
from gateway.logs import bind
from gateway.resources import RESOURCES
from gateway.tenants.service import Principal, authenticate_token

PRINCIPAL = web.RequestKey("principal", Principal)


async def authenticate(request: web.Request, scope: str | None) -> Principal:
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    principal = await authenticate_token(request.app[RESOURCES].db, token.strip())
    if principal is None:
        raise Unauthorized()
    if not scopes.grants(principal.scopes, scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope", required_scope=scope)
    request[PRINCIPAL] = principal
    bind(tenant_id=str(principal.tenant_id))
    return principal


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
