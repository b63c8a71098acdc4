"""GET /v1/limits."""

from __future__ import annotations

from aiohttp import web

from gateway.http.auth import principal_of
from gateway.http.routing import RouteTable
from gateway.limits.schemas import Limits
from gateway.limits.service import limits_for
from gateway.pipeline.wiring import CHAIN
from gateway.resources import RESOURCES
from guardrails.policy import GuardrailPolicy

routes = RouteTable(tag="limits")


@routes.get(
    "/v1/limits",
    summary="The rate limits, frequency caps and calling-hour policy applied to your actions",
    response=Limits,
)
async def get_limits(request: web.Request) -> Limits:
    res = request.app[RESOURCES]
    policy = request.app[CHAIN].policy or GuardrailPolicy.from_settings(res.settings)
    return await limits_for(principal_of(request), policy, res.db, res.redis)
