from __future__ import annotations

from aiohttp import web

from gateway.core.errors import Problem
from gateway.http import docs as api_docs
from gateway.http.middleware import METRICS
from gateway.http.routing import RouteTable, json_response
from gateway.ops import metrics as ops_metrics
from gateway.ops.schemas import Health, Readiness
from gateway.ops.service import readiness
from gateway.resources import RESOURCES

routes = RouteTable(tag="operations")
OPENAPI = web.AppKey("openapi", dict)
_DOCS: dict[int, tuple[dict, str]] = {}  # the rendered /docs page of each app's document


@routes.get("/healthz", summary="The process is alive", public=True, response=Health)
async def healthz(request: web.Request) -> Health:
    return Health()


@routes.get(
    "/readyz",
    summary="PostgreSQL, Redis and migrations are ready (503 names what is not)",
    public=True,
    response=Readiness,
    errors=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    result = await readiness(request.app[RESOURCES])
    if result.status == "ready":
        return json_response(result)
    # problem+json: `status` is the HTTP status; the component states go in `checks`
    raise Problem(
        "not ready: " + ", ".join(k for k, c in result.checks.items() if not c.ok),
        status=503,
        code="not_ready",
        title="Not ready",
        checks={k: c.model_dump(mode="json") for k, c in result.checks.items()},
    )


@routes.get("/metrics", summary="Prometheus metrics", public=True, stream="text/plain")
async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render() + await ops_metrics.collect(request.app)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@routes.get(
    "/openapi.json", summary="This API's OpenAPI document", public=True, stream="application/json"
)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


@routes.get("/docs", summary="API documentation page", public=True, stream="text/html")
async def docs(request: web.Request) -> web.Response:
    doc = request.app[OPENAPI]
    page = _DOCS.get(id(doc))
    if page is None or page[0] is not doc:
        page = _DOCS[id(doc)] = (doc, api_docs.render(doc))  # once per app: the doc is fixed
    return web.Response(text=page[1], content_type="text/html")
