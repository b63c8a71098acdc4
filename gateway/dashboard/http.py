"""`/dashboard` (a static page, no build step) and the routes it needs beyond the API it reads:
the session exchange (an API key for a short-lived cookie) and the trunk-wide view (`ops:read`)."""

from __future__ import annotations

import asyncio
import uuid
from importlib import resources as pkg_resources
from typing import Any

from aiohttp import web

from gateway.core.errors import NotFound, Unauthorized
from gateway.dashboard import sessions
from gateway.dashboard.schemas import (
    Breaker,
    DashboardSession,
    Queue,
    Queues,
    TrunkPool,
    TrunkView,
)
from gateway.http.auth import SESSION_TOKEN, principal_of
from gateway.http.routing import RouteTable, json_response
from gateway.ops import overview
from gateway.pipeline.calls import VOICE
from gateway.pipeline.wiring import PROVIDERS
from gateway.providers.health import ProviderHealth
from gateway.resources import RESOURCES

routes = RouteTable(tag="dashboard")
_ASSETS = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
_PAGE_HEADERS = {
    # Everything the page loads comes from this origin; no inline script, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> str:
    return pkg_resources.files("gateway.dashboard").joinpath("static", name).read_text()


@routes.get(
    "/dashboard", summary="The live operator dashboard (HTML)", public=True, stream="text/html"
)
async def page(request: web.Request) -> web.Response:
    return web.Response(text=_asset("index.html"), content_type="text/html", headers=_PAGE_HEADERS)


@routes.get(
    "/dashboard/static/{name}",
    summary="The dashboard's script and stylesheet",
    public=True,
    stream="text/plain",
    errors=(404,),
)
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise NotFound(f"no dashboard asset {name!r}")
    return web.Response(
        text=_asset(name),
        content_type=_ASSETS[name],
        headers=_PAGE_HEADERS | {"Cache-Control": "no-cache"},
    )


def _set_cookie(request: web.Request, resp: web.Response, token: str, max_age: int) -> None:
    resp.set_cookie(
        sessions.COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def _session_body(session: sessions.Session) -> DashboardSession:
    p = session.principal
    return DashboardSession(
        tenant_id=p.tenant_id,
        tenant=p.tenant_name,
        key_id=p.key_id,
        scopes=list(p.scopes),
        expires_at=session.expires_at,
        ttl_seconds=sessions.TTL_SECONDS,
    )


@routes.post(
    "/v1/dashboard/session",
    summary="Exchange the Bearer API key for a 15-minute dashboard session cookie (HttpOnly, "
    "SameSite=Strict) that authorises GET requests of this key's tenant and scopes, such as "
    "GET /v1/events from EventSource",
    scope="events:read",
    response=DashboardSession,
    status=201,
)
async def create_session(request: web.Request) -> web.Response:
    principal = principal_of(request)
    token, expires_at = await sessions.create(request.app[RESOURCES].db, principal)
    resp = json_response(_session_body(sessions.Session(principal, expires_at)), 201)
    resp.headers["Cache-Control"] = "no-store"
    _set_cookie(request, resp, token, sessions.TTL_SECONDS)
    return resp


@routes.get(
    "/v1/dashboard/session",
    summary="The dashboard session of this cookie, renewed for another 15 minutes",
    scope="events:read",
    response=DashboardSession,
)
async def renew_session(request: web.Request) -> web.Response:
    token = request.get(SESSION_TOKEN)
    if token is None:
        raise NotFound("no dashboard session: this request was not made with the session cookie")
    session = await sessions.renew(request.app[RESOURCES].db, token)
    if session is None:
        raise Unauthorized("the dashboard session has expired or its API key was revoked")
    resp = json_response(_session_body(session))
    resp.headers["Cache-Control"] = "no-store"
    _set_cookie(request, resp, token, sessions.TTL_SECONDS)
    return resp


@routes.delete(
    "/v1/dashboard/session",
    summary="End the dashboard session of this cookie (sign out) and clear the cookie",
    public=True,
    status=204,
)
async def end_session(request: web.Request) -> web.Response:
    # Public: it only destroys the session named by the cookie it is sent with, so the worst
    # a forged request could do is sign the user out (and SameSite=Strict stops that too).
    token = request.cookies.get(sessions.COOKIE)
    if token:
        await sessions.end(request.app[RESOURCES].db, token)
    resp = web.Response(status=204)
    resp.del_cookie(sessions.COOKIE, path="/")
    return resp


@routes.get(
    "/v1/ops/trunk",
    summary="Trunk-wide figures for operators: every pool's occupancy by all tenants, each "
    "provider's circuit breaker, and the work queues' depth and dead letters",
    scope="ops:read",
    response=TrunkView,
)
async def trunk_view(request: web.Request) -> TrunkView:
    res = request.app[RESOURCES]
    occupancy = await request.app[VOICE].service.pools.occupancy()
    registry = request.app[PROVIDERS]
    names = sorted(
        {p.name for p in registry.messaging_providers()}
        | {p.name for p in registry.voice_providers()}
    )
    health = ProviderHealth(res.redis, res.db, res.settings.providers.breaker)
    snaps = await asyncio.gather(*(health.breaker(n).snapshot() for n in names))
    return TrunkView(
        pools=[
            TrunkPool(
                name=o.pool,
                trunk=o.trunk,
                size=o.size,
                in_use=len(o.holders),
                waiting=len(o.waiting),
            )
            for o in occupancy.values()
        ],
        breakers=[
            Breaker(
                provider=s.name,
                state=s.state,
                error_rate=s.error_rate,
                calls=s.calls,
                opened_at=s.opened_at,
                retry_after_s=s.retry_after_s,
            )
            for s in snaps
        ],
        queues=await _queues(res.db, None),
    )


async def _queues(db: Any, tenant_id: uuid.UUID | None) -> list[Queue]:
    return [
        Queue(
            queue=q.queue,
            ready=q.ready,
            due=q.due,
            running=q.running,
            dead=q.dead,
            oldest_due_s=q.oldest_due_s,
        )
        for q in await overview.queues(db, tenant_id)
    ]


@routes.get(
    "/v1/queues",
    summary="Your jobs in the work queues (sends, dials, webhook deliveries, ...): how many "
    "wait (due now or scheduled), run and are dead letters, and the oldest due; other "
    "tenants' jobs are not counted (ops:read sees every tenant's in GET /v1/ops/trunk)",
    scope="events:read",
    response=Queues,
)
async def tenant_queues(request: web.Request) -> Queues:
    res = request.app[RESOURCES]
    return Queues(queues=await _queues(res.db, principal_of(request).tenant_id))
