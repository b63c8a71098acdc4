"""Authentication for declared routes (see routing.Endpoint).

A request carries `Authorization: Bearer <api key>`, or — for GET and HEAD only —
the dashboard's session cookie (gateway/dashboard/sessions.py), which is how
`EventSource` authenticates. A cookie never authorises a state-changing method:
the browser attaches cookies to requests other sites make, so a write must
carry the key itself (CSRF).
"""

from __future__ import annotations

from aiohttp import web

from gateway.core import scopes
from gateway.core.errors import Forbidden, Unauthorized
from gateway.dashboard import sessions
from gateway.logs import bind
from gateway.resources import RESOURCES
from gateway.tenants.service import Principal, authenticate_token

PRINCIPAL = web.RequestKey("principal", Principal)
# The session token when the request was authenticated by the dashboard cookie.
SESSION_TOKEN = web.RequestKey("session_token", str)
_COOKIE_METHODS = frozenset({"GET", "HEAD"})


async def authenticate(request: web.Request, scope: str | None) -> Principal:
    header = request.headers.get("Authorization", "")
    # (the Cookie header is parsed only when there is no key: parsing costs every request)
    cookie = request.cookies.get(sessions.COOKIE) if not header else None
    res = request.app[RESOURCES]
    db = res.db
    if cookie:
        if request.method not in _COOKIE_METHODS:
            raise Unauthorized(
                "the dashboard session cookie authorises GET requests only; "
                "send the API key as 'Authorization: Bearer <key>'"
            )
        session = await sessions.lookup(db, cookie)
        if session is None:
            raise Unauthorized("the dashboard session has expired or its API key was revoked")
        principal = session.principal
        request[SESSION_TOKEN] = cookie
    else:
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise Unauthorized()
        found = await authenticate_token(db, token.strip(), res.keys)
        if found is None:
            raise Unauthorized()
        principal = found
    if not scopes.grants(principal.scopes, scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope", required_scope=scope)
    request[PRINCIPAL] = principal
    bind(tenant_id=str(principal.tenant_id))
    return principal


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]
