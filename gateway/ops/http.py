from __future__ import annotations

from aiohttp import web

from gateway.core.errors import NotFound, Problem
from gateway.http import docs as api_docs
from gateway.http.middleware import METRICS
from gateway.http.routing import RouteTable, json_response
from gateway.ops import metrics as ops_metrics
from gateway.ops.schemas import Health, Readiness
from gateway.ops.service import readiness
from gateway.resources import RESOURCES

routes = RouteTable(tag="operations")
OPENAPI = web.AppKey("openapi", dict)


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


@routes.get("/docs", summary="API documentation (Swagger UI)", public=True, stream="text/html")
async def docs(request: web.Request) -> web.Response:
    return web.Response(
        body=api_docs.asset("index.html"),
        content_type="text/html",
        charset="utf-8",
        headers=api_docs.HEADERS | {"Cache-Control": "no-cache"},
    )


@routes.get(
    "/docs/static/{name}",
    summary="The documentation page's files: the vendored Swagger UI, its licence and ours",
    public=True,
    stream="text/plain",
    errors=(404,),
)
async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in api_docs.ASSETS:
        raise NotFound(f"no documentation asset {name!r}")
    resp = web.Response(
        body=api_docs.asset(name),
        content_type=api_docs.ASSETS[name],
        charset="utf-8",
        headers=api_docs.HEADERS | {"Cache-Control": "public, max-age=3600"},
    )
    resp.enable_compression()  # the bundle is 1.8 MB; gzip when the client accepts it
    return resp
