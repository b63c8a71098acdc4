"""One SSE client: subscribe live, replay the log after Last-Event-ID, then go live.

The order is what makes resume exact. The subscription is registered with the
hub *before* the replay query runs, so an event is either dispatched by the
hub after registration (we get it live) or was dispatched before it — and the
hub only dispatches what has committed, so then the replay query sees it.
Events that arrive both ways are dropped by seq (`position`), so the client
gets every event once, in order.

While replaying, live events are only buffered; if the buffer overflows
during a long replay it is dropped and the replay simply runs again from
where it got to. Once live, an overflow ends the stream (the client resumes
from its last id with nothing lost).
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from aiohttp import web
from aiohttp.http import HttpVersion11

from gateway.core import jsonio
from gateway.events import log
from gateway.events.hub import KEEPALIVE, Hub, Subscription
from gateway.events.model import TypeFilter, event_json, sse_frame
from gateway.http.middleware import REQUEST_ID
from gateway.logs import get_logger
from gateway.outage import unavailable
from gateway.settings import EventsSettings

_log = get_logger(__name__)


async def serve_stream(
    request: web.Request,
    *,
    hub: Hub,
    db: asyncpg.Pool,
    settings: EventsSettings,
    tenant_id: uuid.UUID,
    last_event_id: int | None,
    types: TypeFilter,
) -> web.StreamResponse:
    chunked = request.version >= HttpVersion11  # the hub frames its direct writes to match
    sub = hub.subscribe(str(tenant_id), types, settings.sse_client_buffer, chunked=chunked)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            "X-Request-Id": request[REQUEST_ID],
        }
    )
    if chunked:
        resp.enable_chunked_encoding()
    try:
        await resp.prepare(request)
        sub.attach(request, resp)
        await sub.write(b"retry: %d\n\n" % settings.sse_retry_ms)
        if last_event_id is not None:
            sub.position = await _start_point(sub, db, last_event_id)
            sub.position = await _replay(sub, db, tenant_id, types, settings.replay_page)
        sub.live = True
        await _live(sub)
    except ConnectionError:
        pass  # the client went away (or was cut off for falling behind)
    except Exception as exc:
        if not resp.prepared:
            raise  # still time for a problem+json answer
        # Mid-stream there is no status to send: end the stream; the client resumes.
        if unavailable(exc) is None:
            _log.exception("event stream failed", tenant_id=str(tenant_id))
        else:  # our outage, logged once by the monitor: no traceback per stream
            _log.info("event stream ended by an outage", tenant_id=str(tenant_id))
        sub.close()
    finally:
        hub.unsubscribe(sub)
    if sub.closed:
        resp.force_close()
    return resp


async def _start_point(sub: Subscription, db: asyncpg.Pool, last_event_id: int) -> int:
    """Where replay starts: after `last_event_id`, or a `reset` if it is no longer in the log."""
    if last_event_id == 0:
        # "From the start": nothing before the oldest retained event is owed to this client.
        return await log.pruned_through(db)
    pruned = await log.pruned_through(db)
    if last_event_id < pruned:
        reason, resume = "the resume point is older than the retention window", pruned
    else:
        newest = await log.max_seq(db)
        if last_event_id <= newest:
            return last_event_id
        reason, resume = (
            "the resume point is ahead of the log (was it issued by this server?)",
            newest,
        )
    await sub.write(_reset(last_event_id, resume, reason))
    return resume


def _reset(last_event_id: int, resume: int, reason: str) -> bytes:
    """`event: reset`: events after `last_event_id` up to `resume` may be lost to the client."""
    body = jsonio.dumps_str(
        {"reason": reason, "last_event_id": last_event_id, "resumed_after": resume}
    )
    return sse_frame(resume, "reset", body)


async def _replay(
    sub: Subscription, db: asyncpg.Pool, tenant_id: uuid.UUID, types: TypeFilter, page: int
) -> int:
    position = sub.position
    while not sub.shutdown:
        sub.restart_replay()  # what the hub buffered so far is in the log from here on
        while not sub.shutdown:
            rows = await log.tenant_page(db, tenant_id, position, page, types)
            pruned = await log.pruned_through(db)
            if pruned > position:  # retention overtook this replay: what it passed may be gone
                await sub.write(
                    _reset(position, pruned, "the retention window overtook the replay")
                )
                position = pruned
                continue
            if rows:
                await sub.write(
                    b"".join(sse_frame(r["seq"], r["type"], event_json(r)) for r in rows)
                )
                position = rows[-1]["seq"]
            if len(rows) < page:
                break
        if not sub.overflowed:
            return position
        # Live events outran the buffer while we replayed: replay again from here.
    return position


async def _live(sub: Subscription) -> None:
    """Write what the hub queued for this client (it writes directly while we are parked)."""
    while True:
        if not (sub.chunks or sub.closed or sub.heartbeat_due):
            sub.wakeup.clear()
            sub.park()
            try:
                await sub.wakeup.wait()
            finally:
                sub.unpark()
        if sub.closed:
            return
        out: list[bytes] = []
        position = sub.position
        for pairs, joined in sub.take():
            if pairs[0][0] > position:
                out.append(joined)
                position = pairs[-1][0]
            else:  # overlaps what replay already sent
                for seq, frame in pairs:
                    if seq > position:
                        out.append(frame)
                        position = seq
        sub.position = position
        if sub.heartbeat_due:
            sub.heartbeat_due = False
            if not out:
                out.append(KEEPALIVE)
        if out:
            await sub.write(b"".join(out))
        else:
            await asyncio.sleep(0)
