"""Workflow routes: /v1/workflows (create, edit, archive, versions), /v1/workflows/{id}/runs,
/v1/workflow-runs (scopes workflows:read, workflows:write). A workflow's answers carry its
version as the ETag, which PUT and DELETE take as If-Match."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.middleware import TRACE_ID
from gateway.http.pagination import ListQuery
from gateway.http.routing import RouteTable, json_response
from gateway.resources import RESOURCES
from gateway.workflows import edits, service
from gateway.workflows.schemas import (
    RunDetail,
    RunIn,
    RunList,
    RunQuery,
    VersionQuery,
    Workflow,
    WorkflowCreated,
    WorkflowIn,
    WorkflowList,
    WorkflowQuery,
    WorkflowVersionList,
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
    return _tagged(idempotency.respond(answer), answer[1])


def _tagged(response: web.Response, workflow: Workflow | dict[str, Any]) -> web.Response:
    """The answer with the workflow's ETag (its version)."""
    version = workflow.version if isinstance(workflow, Workflow) else workflow.get("version")
    if isinstance(version, int) and 200 <= response.status < 300:
        response.headers["ETag"] = edits.etag(version)
    return response


def _workflow_id(request: web.Request) -> uuid.UUID:
    return service.parse_id(request.match_info["workflow_id"], "workflow")


@routes.get(
    "/v1/workflows",
    summary="Your workflows, newest first (cursor pagination); archived ones with "
    "?include_archived=true",
    scope="workflows:read",
    query=WorkflowQuery,
    response=WorkflowList,
)
async def list_workflows(request: web.Request, query: WorkflowQuery) -> WorkflowList:
    return await service.list_workflows(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        query.limit,
        query.cursor,
        query.include_archived,
    )


@routes.get(
    "/v1/workflows/{workflow_id}",
    summary="A workflow's steps and trigger at its current version (the ETag), or a past one "
    "with ?version=; an archived workflow stays readable (archived_at)",
    scope="workflows:read",
    query=VersionQuery,
    response=Workflow,
    errors=(404,),
)
async def get_workflow(request: web.Request, query: VersionQuery) -> web.Response:
    workflow = await service.get_workflow(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        _workflow_id(request),
        query.version,
    )
    return _tagged(json_response(workflow), workflow)


@routes.route(
    "PUT",
    "/v1/workflows/{workflow_id}",
    summary="Edit a workflow: replace its name, steps and trigger, validated as a create (a 422 "
    "names the step). Makes the next version; runs under way keep theirs, new runs and "
    'triggers use it. Send If-Match: "<version>" (the ETag) to refuse a stale edit (412 '
    "workflow_version_mismatch); an archived workflow is a 409 workflow_archived",
    scope="workflows:write",
    body=WorkflowIn,
    response=Workflow,
    errors=(404, 409, 412, 422),
)
async def edit_workflow(request: web.Request, body: WorkflowIn) -> web.Response:
    workflow_id = _workflow_id(request)
    key, digest = await idempotency.from_request(request, f"/v1/workflows/{workflow_id}")
    answer = await edits.edit(
        request.app[RESOURCES].db,
        principal_of(request),
        workflow_id,
        body,
        if_match=request.headers.get("If-Match"),
        trace_id=request[TRACE_ID],
        idempotency_key=key,
        digest=digest,
    )
    return _tagged(idempotency.respond(answer), answer[1])


@routes.delete(
    "/v1/workflows/{workflow_id}",
    summary="Archive (soft-delete) a workflow: no new runs or trigger matches; runs under way "
    "finish on their version; it and its runs stay readable. Again: the same answer. "
    "Takes If-Match like PUT",
    scope="workflows:write",
    response=Workflow,
    errors=(404, 412),
)
async def delete_workflow(request: web.Request) -> web.Response:
    workflow = await edits.archive(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        _workflow_id(request),
        if_match=request.headers.get("If-Match"),
        trace_id=request[TRACE_ID],
    )
    return _tagged(json_response(workflow), workflow)


@routes.get(
    "/v1/workflows/{workflow_id}/versions",
    summary="Every version of a workflow, newest first (cursor pagination): what runs of each "
    "version (a run's workflow_version) took",
    scope="workflows:read",
    query=ListQuery,
    response=WorkflowVersionList,
    errors=(404,),
)
async def list_versions(request: web.Request, query: ListQuery) -> WorkflowVersionList:
    return await edits.list_versions(
        request.app[RESOURCES].db, principal_of(request).tenant_id, _workflow_id(request), query
    )


@routes.post(
    "/v1/workflows/{workflow_id}/runs",
    summary="Start a run of the current version with its {{variables}} (201); every send is "
    "rendered first, so a missing variable is a 422 naming the step. An archived workflow is a "
    "409 workflow_archived. Send Idempotency-Key to retry safely",
    scope="workflows:write",
    body=RunIn,
    response=RunDetail,
    status=201,
    errors=(404, 409, 422),
)
async def start_run(request: web.Request, body: RunIn) -> web.Response:
    workflow_id = _workflow_id(request)
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
    workflow = await service.get_workflow(db, tenant_id, _workflow_id(request))
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
