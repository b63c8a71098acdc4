from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from redis.exceptions import RedisError

from gateway.core.errors import Problem, ValidationFailed
from gateway.dashboard import sessions
from gateway.events import log, stats
from gateway.events.hub import Hub
from gateway.events.model import TypeFilter, public_event
from gateway.events.schemas import MAX_ID, EventPage, EventPageQuery, EventStreamQuery, Stats
from gateway.events.stream import serve_stream
from gateway.http.auth import SESSION_TOKEN, principal_of
from gateway.http.routing import RouteTable
from gateway.resources import RESOURCES


@dataclass
class _HubSlot:
    """The process's SSE hub, started by the first stream request (API roles only need it)."""

    hub: Hub | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, app: web.Application) -> Hub:
        if self.hub is None:
            async with self.lock:
                if self.hub is None:
                    res = app[RESOURCES]
                    cfg = res.settings.events
                    hub = Hub(
                        res.db,
                        res.redis,
                        flush_interval=cfg.sse_flush_interval,
                        resync_interval=cfg.hub_resync_interval,
                        heartbeat=cfg.sse_heartbeat,
                    )
                    try:
                        await hub.start()
                    except BaseException:
                        await hub.close()
                        raise
                    self.hub = hub
        return self.hub

    async def close(self, app: web.Application) -> None:
        async with self.lock:
            if self.hub is not None:
                await self.hub.close()
                self.hub = None


HUB = web.AppKey("event_hub", _HubSlot)


@dataclass
class EventRoutes(RouteTable):
    """The event routes bring the hub with them: installed with the routes, closed on shutdown
    (before the server waits for handlers, so open streams end at once)."""

    def install(self, app: web.Application) -> None:
        super().install(app)
        slot = _HubSlot()
        app[HUB] = slot
        app.on_shutdown.append(slot.close)


routes = EventRoutes(tag="events")


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


@routes.get(
    "/v1/events",
    summary="Server-sent events of your tenant (send Accept: text/event-stream; resume with "
    "the Last-Event-ID header). Frames carry `id:` (the event id), `event:` (its type) and "
    "`data:` (the event as JSON); `event: reset` means the resume point was pruned",
    scope="events:read",
    query=EventStreamQuery,
    stream="text/event-stream",
    errors=(406, 503),
)
async def stream_events(request: web.Request, query: EventStreamQuery) -> web.StreamResponse:
    if not _wants_stream(request):
        raise Problem(
            "this is a text/event-stream endpoint: send 'Accept: text/event-stream' "
            "(EventSource does), or poll GET /v1/events/page for JSON",
            status=406,
            code="not_acceptable",
            title="Not acceptable",
        )
    last_event_id = query.last_event_id
    header = request.headers.get("Last-Event-ID")
    if header is not None and header.strip():
        try:
            last_event_id = int(header.strip())
            if not 0 <= last_event_id <= MAX_ID:
                raise ValueError
        except ValueError:
            raise ValidationFailed(
                "Last-Event-ID: must be an event id this server sent (a non-negative integer)"
            ) from None
    res = request.app[RESOURCES]
    try:
        hub = await request.app[HUB].get(request.app)
    except (RedisError, OSError, TimeoutError):
        raise Problem(
            "the event bus is unreachable; retry shortly (GET /v1/events/page reads the log)",
            status=503,
            code="events_unavailable",
            title="Service unavailable",
            headers={"Retry-After": "5"},
        ) from None
    token = request.get(SESSION_TOKEN)  # opened with the dashboard's cookie: ends with it
    watch = asyncio.create_task(sessions.watch_stream(res.db, token, request)) if token else None
    try:
        return await serve_stream(
            request,
            hub=hub,
            db=res.db,
            settings=res.settings.events,
            tenant_id=principal_of(request).tenant_id,
            last_event_id=last_event_id,
            types=TypeFilter.parse(query.types),
        )
    finally:
        if watch is not None:
            watch.cancel()


@routes.get(
    "/v1/events/page",
    summary="Your tenant's events after an id, oldest first (JSON polling; same ids and order as the stream)",
    scope="events:read",
    query=EventPageQuery,
    response=EventPage,
)
async def events_page(request: web.Request, query: EventPageQuery) -> EventPage:
    db = request.app[RESOURCES].db
    tenant_id = principal_of(request).tenant_id
    types = TypeFilter.parse(query.types)
    from_start = not query.after  # omitted or 0: from the oldest retained event
    after, reset = query.after or 0, False
    pruned = await log.pruned_through(db)
    while True:
        if after < pruned:
            reset = reset or not from_start
            after = pruned
        rows = await log.tenant_page(db, tenant_id, after, query.limit + 1, types)
        pruned = await log.pruned_through(db)
        if pruned <= after:
            break  # retention did not overtake the read: the page is whole
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    return EventPage.model_validate(
        {
            "data": [public_event(r) for r in rows],
            "has_more": has_more,
            "last_event_id": rows[-1]["seq"] if rows else after,
            "reset": reset,
        }
    )


@routes.get(
    "/v1/stats",
    summary="Live counters of your tenant: message and call status events, pool occupancy",
    scope="events:read",
    response=Stats,
)
async def get_stats(request: web.Request) -> Stats:
    res = request.app[RESOURCES]
    return Stats.model_validate(await stats.read(res.redis, principal_of(request).tenant_id))
