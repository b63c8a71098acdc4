from __future__ import annotations

from aiohttp import web

from gateway import queue
from gateway.core.errors import NotFound
from gateway.deadletters.schemas import DeadLetter, DeadLetterList, DeadLetterQuery, Replayed
from gateway.http.auth import principal_of
from gateway.http.pagination import decode_cursor, page_of
from gateway.http.routing import RouteTable
from gateway.resources import RESOURCES

routes = RouteTable(tag="dead letters")


@routes.get(
    "/v1/dead-letters",
    summary="Jobs that exhausted their retry budget, newest first (cursor pagination)",
    scope="dead_letters:manage",
    query=DeadLetterQuery,
    response=DeadLetterList,
)
async def list_dead_letters(request: web.Request, query: DeadLetterQuery) -> DeadLetterList:
    (before,) = decode_cursor("dead-letters", query.cursor, (int,))
    rows = await queue.list_dead(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        limit=query.limit + 1,
        before_id=before,
        queue_name=query.queue,
    )
    page, cursor = page_of("dead-letters", rows, query.limit, lambda r: (r["id"],))
    return DeadLetterList(data=[DeadLetter(**dict(r)) for r in page], next_cursor=cursor)


@routes.post(
    "/v1/dead-letters/{job_id}/replay",
    summary="Put a dead job back in its queue with a fresh retry budget",
    scope="dead_letters:manage",
    response=Replayed,
    status=202,
    errors=(404,),
)
async def replay(request: web.Request) -> Replayed:
    try:
        job_id = int(request.match_info["job_id"])
    except ValueError:
        raise NotFound("no such dead letter", code="dead_letter_not_found") from None
    if not 0 < job_id < 2**63:
        raise NotFound("no such dead letter", code="dead_letter_not_found")
    async with request.app[RESOURCES].db.acquire() as conn, conn.transaction():
        row = await queue.replay_dead(conn, principal_of(request).tenant_id, job_id)
    if row is None:
        raise NotFound("no such dead letter", code="dead_letter_not_found")
    return Replayed(id=row["id"], queue=row["queue"])
