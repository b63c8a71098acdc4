"""Request middleware: ids in the log context, access line and metrics, errors as problem+json."""

from __future__ import annotations

import re
import time

from aiohttp import web

from gateway.core.errors import Problem
from gateway.core.ids import new_request_id, new_trace_id
from gateway.http.metrics import Registry
from gateway.http.routing import json_response
from gateway.logs import bind, clear, get_logger
from gateway.outage import DependencyUnavailable, unavailable
from gateway.resources import RESOURCES

log = get_logger("gateway.http")
METRICS = web.AppKey("metrics", Registry)
REQUEST_ID = web.RequestKey("request_id", str)
TRACE_ID = web.RequestKey("trace_id", str)
_TRACE = re.compile(r"^[0-9a-f]{32}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def problem_response(problem: Problem, request: web.Request) -> web.Response:
    return json_response(
        problem.body(instance=request.path),
        problem.status,
        content_type="application/problem+json",
        headers=problem.headers,
    )


def _outage(request: web.Request, exc: Exception) -> DependencyUnavailable | None:
    """503 for our own outage (PostgreSQL or Redis unreachable), logged once by the monitor;
    None for anything else, which is a bug and a 500."""
    res = request.app.get(RESOURCES)
    monitor = res.outages if res is not None else None
    dependency = monitor.check(exc) if monitor is not None else unavailable(exc)
    if dependency is None:
        return None
    return (
        monitor.problem(dependency) if monitor is not None else DependencyUnavailable(dependency, 5)
    )


def _route_label(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if info.http_exception is not None or resource is None:
        return "unmatched"
    return resource.canonical


def _trace_from(request: web.Request) -> str:
    header = request.headers.get("traceparent", "")
    parts = header.split("-")
    if len(parts) == 4 and _TRACE.match(parts[1]):
        return parts[1]
    given = request.headers.get("X-Trace-Id", "").lower()
    return given if _TRACE.match(given) else new_trace_id()


@web.middleware
async def context_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """Outermost: binds ids, converts every failure to problem+json, logs and measures."""
    clear()
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID.match(given) else new_request_id()
    trace_id = _trace_from(request)
    request[REQUEST_ID] = request_id
    request[TRACE_ID] = trace_id
    bind(request_id=request_id, trace_id=trace_id)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Problem as problem:
        response = problem_response(problem, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        response = problem_response(
            Problem(exc.reason, status=exc.status, code=code, title=exc.reason, headers=headers),
            request,
        )
    except Exception as exc:
        outage = _outage(request, exc)
        if outage is not None:
            response = problem_response(outage, request)
        else:
            log.exception("unhandled error", method=request.method, path=request.path)
            response = problem_response(
                Problem(
                    f"An internal error occurred; quote request id {request_id} when reporting it",
                    status=500,
                    code="internal_error",
                    title="Internal server error",
                ),
                request,
            )
    elapsed = time.perf_counter() - started
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
        response.headers.setdefault("X-Trace-Id", trace_id)
    route = _route_label(request)
    metrics = request.app[METRICS]
    metrics.counter("trunkline_http_requests_total", "HTTP requests by route and status").inc(
        method=request.method, route=route, status=str(response.status)
    )
    metrics.histogram("trunkline_http_request_duration_seconds", "HTTP request latency").observe(
        elapsed, method=request.method, route=route
    )
    log.info(
        "request",
        method=request.method,
        path=request.path,
        route=route,
        status=response.status,
        duration_ms=round(elapsed * 1000, 2),
    )
    return response
