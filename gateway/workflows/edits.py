"""Editing and archiving workflows, and reading their versions.

An edit (PUT) is validated exactly as a create is, then makes the next immutable version under
the workflow's row lock: concurrent edits queue on it, and `If-Match` (the version as ETag) is
compared under the same lock, so of two editors who read version 3, one makes version 4 and
the other gets a 412 — never a silent overwrite. Runs record the version they started on and
keep it (gateway/workflows/engine.py); run starts and trigger matches read the workflow
FOR SHARE, so once an edit or a DELETE has answered, every new run uses what it made.

DELETE archives: the row and its versions and runs stay (audit), runs in flight finish, and
nothing new starts. Each change is a `workflow.updated` / `workflow.archived` event in its
transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from gateway.core.errors import Problem, ValidationFailed
from gateway.events.outbox import NewEvent, emit
from gateway.http import idempotency
from gateway.http.pagination import ListQuery, decode_cursor, page_of
from gateway.tenants.service import Principal
from gateway.workflows import definition, repo
from gateway.workflows.schemas import (
    Workflow,
    WorkflowIn,
    WorkflowVersion,
    WorkflowVersionList,
)
from gateway.workflows.service import archived, check_scopes, not_found, workflow_from_row

MAX_VERSION = 2**31 - 1  # workflow_versions.version is a PostgreSQL integer


def etag(version: int) -> str:
    """A workflow's ETag: its version, as a strong entity tag."""
    return f'"{version}"'


def if_match_holds(header: str | None, version: int) -> bool:
    """RFC 9110 §13.1.1 with strong comparison: `*` or a listed tag equal to the version's.
    A weak tag (W/"3") never matches; a bare 3 is taken as "3" (a quote forgotten in a shell)."""
    if header is None:
        return True
    for tag in (t.strip() for t in header.split(",")):
        if tag == "*" or tag in (etag(version), str(version)):
            return True
    return False


def precondition_failed(given: str, version: int) -> Problem:
    return Problem(
        f"If-Match {given!r} does not match the workflow's current version {etag(version)}: "
        "someone edited it since you read it. GET it, reapply your change, send the new ETag",
        status=412,
        code="workflow_version_mismatch",
        title="Precondition failed",
        headers={"ETag": etag(version)},
        current_version=version,
    )


async def _locked(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, workflow_id: uuid.UUID, if_match: str | None
) -> asyncpg.Record:
    """The workflow FOR UPDATE, once If-Match holds for it."""
    row = await repo.get_workflow(conn, workflow_id, tenant_id, lock="UPDATE")
    if row is None:
        raise not_found()
    if not if_match_holds(if_match, row["version"]):
        raise precondition_failed(if_match or "", row["version"])
    return row


def _event(row: asyncpg.Record, kind: str, trace_id: str, data: dict[str, Any]) -> NewEvent:
    return NewEvent(
        row["tenant_id"],
        f"workflow.{kind}",
        str(row["id"]),
        trace_id,
        {"workflow_id": str(row["id"]), "version": row["version"], "name": row["name"]} | data,
    )


async def edit(
    db: asyncpg.Pool,
    principal: Principal,
    workflow_id: uuid.UUID,
    body: WorkflowIn,
    *,
    if_match: str | None,
    trace_id: str,
    idempotency_key: str | None = None,
    digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    """Replace the name, steps and trigger: the next version (200). The same definition as the
    current one makes no version (a repeated PUT changes nothing). An archived workflow is a
    409; a stale If-Match a 412; a wrong step a 422 naming it — and nothing is stored."""
    steps = definition.validate(body)
    check_scopes(principal, steps)
    trigger = body.trigger.model_dump() if body.trigger is not None else None

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        row = await _locked(conn, principal.tenant_id, workflow_id, if_match)
        if row["archived_at"] is not None:
            raise archived(row)
        if (row["name"], row["steps"], row["trigger"]) != (body.name, steps, trigger):
            before = row["version"]
            row = await repo.update_workflow(
                conn, workflow_id, name=body.name, steps=steps, trigger=trigger
            )
            await emit(conn, _event(row, "updated", trace_id, {"previous_version": before}))
        return workflow_from_row(row).model_dump(mode="json")

    path = f"/v1/workflows/{workflow_id}"
    return await idempotency.in_transaction(
        db, principal.tenant_id, idempotency_key, path, digest, 200, work
    )


async def archive(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    workflow_id: uuid.UUID,
    *,
    if_match: str | None,
    trace_id: str,
) -> Workflow:
    """Archive (soft-delete): no new runs or trigger matches from the commit on. Archiving
    an archived workflow answers it again, unchanged."""
    async with db.acquire() as conn, conn.transaction():
        row = await _locked(conn, tenant_id, workflow_id, if_match)
        if row["archived_at"] is None:
            row = await repo.archive_workflow(conn, workflow_id)
            await emit(conn, _event(row, "archived", trace_id, {}))
        return workflow_from_row(row)


async def list_versions(
    db: asyncpg.Pool, tenant_id: uuid.UUID, workflow_id: uuid.UUID, query: ListQuery
) -> WorkflowVersionList:
    if await repo.get_workflow(db, workflow_id, tenant_id) is None:
        raise not_found()
    (before,) = decode_cursor("workflow-versions", query.cursor, (int,))
    if before is not None and not 1 <= before <= MAX_VERSION:  # not one this list issued
        raise ValidationFailed("cursor: not a cursor this list issued", code="invalid_cursor")
    rows = await repo.list_versions(db, workflow_id, limit=query.limit, before=before)
    page, cursor = page_of("workflow-versions", rows, query.limit, lambda r: (r["version"],))
    return WorkflowVersionList(
        data=[WorkflowVersion.model_validate(dict(r)) for r in page], next_cursor=cursor
    )
