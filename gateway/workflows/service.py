"""Workflows for the API: define, start a run, read runs and their timelines, cancel (edits
and DELETE: gateway/workflows/edits.py).

Every state change and its `workflow.*` event commit together (gateway/workflows/runs.py);
a POST with an Idempotency-Key claims the key in the same transaction and stores the answer.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from gateway.core.errors import Conflict, Forbidden, NotFound
from gateway.core.ids import new_id
from gateway.core.scopes import grants
from gateway.http import idempotency
from gateway.http.pagination import decode_cursor, page_of
from gateway.tenants.service import Principal
from gateway.webhooks import signing
from gateway.workflows import definition, repo, runs
from gateway.workflows.schemas import (
    Run,
    RunDetail,
    RunList,
    RunQuery,
    StepEntry,
    Waiting,
    Workflow,
    WorkflowCreated,
    WorkflowIn,
    WorkflowList,
)


def parse_id(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no such {what}", code=f"{what}_not_found") from None


def workflow_from_row(row: asyncpg.Record) -> Workflow:
    return Workflow(
        id=row["id"],
        name=row["name"],
        steps=row["steps"],
        trigger=row["trigger"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        archived_at=row["archived_at"],
    )


def run_from_row(row: asyncpg.Record) -> Run:
    waiting = None
    if row["status"] == "waiting":
        waiting = Waiting(until=row["wait_until"], wake_at=row["wake_at"])
    return Run(
        id=row["id"],
        workflow_id=row["workflow_id"],
        workflow_version=row["workflow_version"],
        status=row["status"],
        step=row["step"],
        variables=row["variables"],
        trace_id=row["trace_id"],
        waiting=waiting,
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        ended_at=row["ended_at"],
    )


def check_scopes(principal: Principal, steps: list[dict[str, Any]]) -> None:
    """A workflow sends on behalf of its author: the key must be allowed to send what it holds."""
    for i, step in enumerate(steps):
        if "send" in step:
            needed = "calls:write" if definition.is_call(step["send"]) else "messages:write"
            if not grants(principal.scopes, needed):
                raise Forbidden(f"steps[{i}] sends: the API key lacks the scope {needed}")


async def create(
    db: asyncpg.Pool,
    principal: Principal,
    body: WorkflowIn,
    *,
    idempotency_key: str | None = None,
    digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    steps = definition.validate(body)
    check_scopes(principal, steps)
    trigger = body.trigger.model_dump() if body.trigger is not None else None

    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        row = await repo.insert_workflow(
            conn,
            {
                "id": new_id(),
                "tenant_id": principal.tenant_id,
                "name": body.name,
                "steps": steps,
                "trigger": trigger,
                "webhook_secret": signing.new_secret(),
            },
        )
        out = WorkflowCreated(
            **workflow_from_row(row).model_dump(), webhook_secret=row["webhook_secret"]
        )
        return out.model_dump(mode="json")

    return await idempotency.in_transaction(
        db, principal.tenant_id, idempotency_key, "/v1/workflows", digest, 201, work
    )


def not_found() -> NotFound:
    return NotFound("no such workflow", code="workflow_not_found")


def archived(row: asyncpg.Record) -> Conflict:
    return Conflict(
        f"the workflow was archived (deleted) at {row['archived_at'].isoformat()}: it starts no "
        "new runs and cannot be edited; it and its runs stay readable",
        code="workflow_archived",
        archived_at=row["archived_at"].isoformat(),
    )


async def get_workflow(
    db: asyncpg.Pool, tenant_id: uuid.UUID, workflow_id: uuid.UUID, version: int | None = None
) -> Workflow:
    """The current definition, or a past `version` of it (what runs of that version take)."""
    row = await repo.get_workflow(db, workflow_id, tenant_id)
    if row is None:
        raise not_found()
    out = workflow_from_row(row)
    if version is None or version == row["version"]:
        return out
    past = await repo.get_version(db, workflow_id, version)
    if past is None:
        raise NotFound(
            f"the workflow has no version {version} (its current is {row['version']})",
            code="workflow_version_not_found",
        )
    return out.model_copy(
        update={
            "version": version,
            "name": past["name"],
            "steps": past["steps"],
            "trigger": past["trigger"],
            "updated_at": past["created_at"],
        }
    )


async def list_workflows(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    include_archived: bool = False,
) -> WorkflowList:
    after = decode_cursor("workflows", cursor, (datetime, uuid.UUID))
    rows = await repo.list_workflows(
        db, tenant_id, limit=limit, after=after, include_archived=include_archived
    )
    page, next_cursor = page_of("workflows", rows, limit, lambda r: (r["created_at"], r["id"]))
    return WorkflowList(data=[workflow_from_row(r) for r in page], next_cursor=next_cursor)


async def start_run(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    workflow_id: uuid.UUID,
    variables: dict[str, Any],
    *,
    trace_id: str,
    idempotency_key: str | None = None,
    digest: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    async def work(conn: asyncpg.Connection) -> dict[str, Any]:
        # FOR SHARE: an edit or a DELETE answered before this start is seen here, and one
        # coming after waits for the run to commit (the run records the version it read).
        workflow = await repo.get_workflow(conn, workflow_id, tenant_id, lock="SHARE")
        if workflow is None:
            raise not_found()
        if workflow["archived_at"] is not None:
            raise archived(workflow)
        definition.check_run(workflow["steps"], variables)
        run = await runs.start(conn, workflow, variables, trace_id=trace_id)
        assert run is not None  # only a trigger's event can have started it before
        return (await _detail(conn, run, workflow["steps"])).model_dump(mode="json")

    path = f"/v1/workflows/{workflow_id}/runs"
    return await idempotency.in_transaction(db, tenant_id, idempotency_key, path, digest, 201, work)


async def _detail(
    conn: asyncpg.Pool | asyncpg.Connection, run: asyncpg.Record, steps: list[dict[str, Any]]
) -> RunDetail:
    timeline = [
        StepEntry(
            step=s["step"],
            id=steps[s["step"]].get("id") if s["step"] < len(steps) else None,
            kind=s["kind"],
            status=s["status"],
            outcome=s["outcome"],
            detail=s["detail"],
            started_at=s["started_at"],
            ended_at=s["ended_at"],
        )
        for s in await repo.run_steps(conn, run["id"])
    ]
    return RunDetail(**run_from_row(run).model_dump(), timeline=timeline)


async def get_run(db: asyncpg.Pool, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunDetail:
    run = await repo.get_run(db, run_id, tenant_id)
    if run is None:
        raise NotFound("no such workflow run", code="workflow_run_not_found")
    return await _detail(db, run, await _steps_of(db, run))


async def _steps_of(conn: asyncpg.Pool | asyncpg.Connection, run: asyncpg.Record) -> list[Any]:
    """The steps the run takes: its own version's, whatever was edited since."""
    version = await repo.get_version(conn, run["workflow_id"], run["workflow_version"])
    assert version is not None  # a foreign key
    return version["steps"]


async def list_runs(
    db: asyncpg.Pool,
    tenant_id: uuid.UUID,
    query: RunQuery,
    workflow_id: uuid.UUID | None = None,
) -> RunList:
    after = decode_cursor("workflow-runs", query.cursor, (datetime, uuid.UUID))
    rows = await repo.list_runs(
        db,
        tenant_id,
        limit=query.limit,
        after=after,
        status=query.status,
        workflow_id=workflow_id,
    )
    page, cursor = page_of("workflow-runs", rows, query.limit, lambda r: (r["created_at"], r["id"]))
    return RunList(data=[run_from_row(r) for r in page], next_cursor=cursor)


async def cancel_run(db: asyncpg.Pool, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunDetail:
    """Cancel a running or waiting run. The run's lock is taken, so a step being taken right
    now finishes first; once this answers, the run sends nothing more. Canceling a canceled
    run answers it again; a completed or failed one is a 409."""
    async with db.acquire() as conn, conn.transaction():
        run = await repo.get_run(conn, run_id, tenant_id, lock=True)
        if run is None:
            raise NotFound("no such workflow run", code="workflow_run_not_found")
        if run["status"] in ("completed", "failed"):
            raise Conflict(f"the run is {run['status']}", code="workflow_run_ended")
        if run["status"] != "canceled":
            run = await runs.cancel(conn, run)
        return await _detail(conn, run, await _steps_of(conn, run))
