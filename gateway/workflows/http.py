"""Workflow routes: /v1/workflows, /v1/workflows/{id}/runs, /v1/workflow-runs (scopes
workflows:read, workflows:write)."""

from __future__ import annotations

from aiohttp import web

from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.middleware import TRACE_ID
from gateway.http.pagination import ListQuery
from gateway.http.routing import RouteTable
from gateway.resources import RESOURCES
from gateway.workflows import service
from gateway.workflows.schemas import (
    RunDetail,
    RunIn,
    RunList,
    RunQuery,
    Workflow,
    WorkflowCreated,
    WorkflowIn,
    WorkflowList,
)

routes = RouteTable(tag="workflows")


@routes.post(
    "/v1/workflows",
    summary="Define a workflow (201): steps send | wait | branch | webhook, an optional trigger. "
    "A 422 names the step (code workflow_invalid_step, `step` its index)",
    scope="workflows:write",
    body=WorkflowIn,
    response=WorkflowCreated,
    status=201,
    errors=(403, 409, 422),
)
async def create_workflow(request: web.Request, body: WorkflowIn) -> web.Response:
    key, digest = await idempotency.from_request(request)
    answer = await service.create(
        request.app[RESOURCES].db,
        principal_of(request),
        body,
        idempotency_key=key,
        digest=digest,
    )
    return idempotency.respond(answer)


@routes.get(
    "/v1/workflows",
    summary="Your workflows, newest first (cursor pagination)",
    scope="workflows:read",
    query=ListQuery,
    response=WorkflowList,
)
async def list_workflows(request: web.Request, query: ListQuery) -> WorkflowList:
    return await service.list_workflows(
        request.app[RESOURCES].db, principal_of(request).tenant_id, query.limit, query.cursor
    )


@routes.get(
    "/v1/workflows/{workflow_id}",
    summary="A workflow's steps and trigger",
    scope="workflows:read",
    response=Workflow,
    errors=(404,),
)
async def get_workflow(request: web.Request) -> Workflow:
    return await service.get_workflow(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        service.parse_id(request.match_info["workflow_id"], "workflow"),
    )


@routes.post(
    "/v1/workflows/{workflow_id}/runs",
    summary="Start a run with its {{variables}} (201); every send is rendered first, so a "
    "missing variable is a 422 naming the step. Send Idempotency-Key to retry safely",
    scope="workflows:write",
    body=RunIn,
    response=RunDetail,
    status=201,
    errors=(404, 409, 422),
)
async def start_run(request: web.Request, body: RunIn) -> web.Response:
    workflow_id = service.parse_id(request.match_info["workflow_id"], "workflow")
    key, digest = await idempotency.from_request(request, f"/v1/workflows/{workflow_id}/runs")
    answer = await service.start_run(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        workflow_id,
        body.variables,
        trace_id=request[TRACE_ID],
        idempotency_key=key,
        digest=digest,
    )
    return idempotency.respond(answer)


@routes.get(
    "/v1/workflows/{workflow_id}/runs",
    summary="A workflow's runs, newest first; filter by status (cursor pagination)",
    scope="workflows:read",
    query=RunQuery,
    response=RunList,
    errors=(404,),
)
async def list_workflow_runs(request: web.Request, query: RunQuery) -> RunList:
    tenant_id = principal_of(request).tenant_id
    db = request.app[RESOURCES].db
    workflow = await service.get_workflow(
        db, tenant_id, service.parse_id(request.match_info["workflow_id"], "workflow")
    )
    return await service.list_runs(db, tenant_id, query, workflow.id)


@routes.get(
    "/v1/workflow-runs",
    summary="Your workflow runs, newest first; filter by status (cursor pagination)",
    scope="workflows:read",
    query=RunQuery,
    response=RunList,
)
async def list_runs(request: web.Request, query: RunQuery) -> RunList:
    return await service.list_runs(
        request.app[RESOURCES].db, principal_of(request).tenant_id, query
    )


@routes.get(
    "/v1/workflow-runs/{run_id}",
    summary="A run: status (running | waiting | completed | canceled | failed), what it waits "
    "for, and the timeline of its steps with their outcomes",
    scope="workflows:read",
    response=RunDetail,
    errors=(404,),
)
async def get_run(request: web.Request) -> RunDetail:
    return await service.get_run(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        service.parse_id(request.match_info["run_id"], "workflow_run"),
    )


@routes.post(
    "/v1/workflow-runs/{run_id}/cancel",
    summary="Cancel a running or waiting run: once answered, it sends nothing more",
    scope="workflows:write",
    response=RunDetail,
    errors=(404, 409),
)
async def cancel_run(request: web.Request) -> RunDetail:
    return await service.cancel_run(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        service.parse_id(request.match_info["run_id"], "workflow_run"),
    )
