"""Webhook endpoint management and redelivery (every call scoped to the caller's tenant)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from gateway import queue
from gateway.core.errors import Conflict, NotFound, Problem
from gateway.core.ids import new_id
from gateway.http import idempotency
from gateway.http.pagination import ListQuery, decode_cursor, page_of
from gateway.webhooks import repo, signing, ssrf
from gateway.webhooks.deliver import JOB_ATTEMPTS, QUEUE
from gateway.webhooks.schemas import (
    Delivery,
    DeliveryList,
    DeliveryQuery,
    Endpoint,
    EndpointCreated,
    EndpointIn,
    EndpointList,
    delivery_from_row,
    endpoint_from_row,
)


def parse_id(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no such {what}", code=f"{what}_not_found") from None


async def create_endpoint(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    body: EndpointIn,
    *,
    allow_private: bool,
    idempotency_key: str | None = None,
    request_digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    try:
        await ssrf.check_url(body.url, allow_private=allow_private)
    except ssrf.TargetRefused as exc:
        raise Problem(
            f"url: {exc}", status=422, code="webhook_url_refused", title="URL not allowed"
        ) from None
    async with pool.acquire() as conn, conn.transaction():
        if idempotency_key is not None:
            replay = await idempotency.claim(
                conn, tenant_id, idempotency_key, "POST", "/v1/webhook-endpoints", request_digest
            )
            if replay is not None:
                return replay
        secret = signing.new_secret()
        row = await repo.insert_endpoint(
            conn,
            endpoint_id=new_id(),
            tenant_id=tenant_id,
            url=body.url,
            event_types=body.event_types,
            description=body.description,
            secret=secret,
        )
        created = EndpointCreated(**endpoint_from_row(row).model_dump(), secret=secret)
        out = json.loads(created.model_dump_json())
        if idempotency_key is not None:
            await idempotency.record(conn, tenant_id, idempotency_key, 201, out)
    return 201, out


async def list_endpoints(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, query: ListQuery
) -> EndpointList:
    after = decode_cursor("webhook-endpoints", query.cursor, (datetime, uuid.UUID))
    rows = await repo.list_endpoints(pool, tenant_id, limit=query.limit, after=after)
    page, cursor = page_of(
        "webhook-endpoints", rows, query.limit, lambda r: (r["created_at"], r["id"])
    )
    return EndpointList(data=[endpoint_from_row(r) for r in page], next_cursor=cursor)


async def get_endpoint(pool: asyncpg.Pool, tenant_id: uuid.UUID, raw_id: str) -> Endpoint:
    row = await repo.get_endpoint(pool, tenant_id, parse_id(raw_id, "webhook_endpoint"))
    if row is None:
        raise NotFound("no such webhook endpoint", code="webhook_endpoint_not_found")
    return endpoint_from_row(row)


async def delete_endpoint(pool: asyncpg.Pool, tenant_id: uuid.UUID, raw_id: str) -> None:
    if not await repo.delete_endpoint(pool, tenant_id, parse_id(raw_id, "webhook_endpoint")):
        raise NotFound("no such webhook endpoint", code="webhook_endpoint_not_found")


async def enable_endpoint(pool: asyncpg.Pool, tenant_id: uuid.UUID, raw_id: str) -> Endpoint:
    row = await repo.enable_endpoint(pool, tenant_id, parse_id(raw_id, "webhook_endpoint"))
    if row is None:
        raise NotFound("no such webhook endpoint", code="webhook_endpoint_not_found")
    return endpoint_from_row(row)


async def list_deliveries(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, raw_endpoint_id: str, query: DeliveryQuery
) -> DeliveryList:
    endpoint = await get_endpoint(pool, tenant_id, raw_endpoint_id)
    resource = f"deliveries:{endpoint.id}"  # a cursor of one endpoint is no cursor of another
    rows = await repo.list_deliveries(
        pool,
        tenant_id,
        endpoint.id,
        limit=query.limit,
        status=query.status,
        after=decode_cursor(resource, query.cursor, (datetime, uuid.UUID)),
    )
    page, cursor = page_of(resource, rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return DeliveryList(data=[delivery_from_row(r) for r in page], next_cursor=cursor)


async def redeliver(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, raw_endpoint_id: str, raw_delivery_id: str
) -> Delivery:
    """Start a fresh attempt series for a delivery (whatever its status)."""
    endpoint_id = parse_id(raw_endpoint_id, "webhook_endpoint")
    delivery_id = parse_id(raw_delivery_id, "webhook_delivery")
    async with pool.acquire() as conn, conn.transaction():
        row = await repo.get_delivery(conn, tenant_id, endpoint_id, delivery_id)
        if row is None:
            raise NotFound("no such webhook delivery", code="webhook_delivery_not_found")
        endpoint = await repo.get_endpoint(conn, tenant_id, endpoint_id)
        if endpoint is not None and endpoint["status"] != "enabled":
            raise Conflict(
                "the endpoint is disabled; enable it first", code="webhook_endpoint_disabled"
            )
        job_id = await queue.enqueue(
            conn,
            QUEUE,
            {"delivery_id": str(delivery_id)},
            tenant_id=tenant_id,
            trace_id=row["trace_id"],
            max_attempts=JOB_ATTEMPTS,
        )
        updated = await repo.restart_delivery(conn, tenant_id, delivery_id, job_id)
    return delivery_from_row(updated)
