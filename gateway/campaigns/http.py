from __future__ import annotations

from aiohttp import web

from gateway.campaigns import dids, service
from gateway.campaigns.schemas import (
    Campaign,
    CampaignIn,
    CampaignList,
    CampaignQuery,
    ProspectList,
    ProspectQuery,
    ProspectsAdded,
    ProspectsIn,
)
from gateway.http import idempotency
from gateway.http.auth import principal_of
from gateway.http.routing import RouteTable
from gateway.resources import RESOURCES

routes = RouteTable(tag="campaigns")


@routes.post(
    "/v1/campaigns",
    summary="Create a campaign (201, draft); send Idempotency-Key to retry safely",
    scope="campaigns:write",
    body=CampaignIn,
    response=Campaign,
    status=201,
    errors=(409, 422),
)
async def create_campaign(request: web.Request, body: CampaignIn) -> web.Response:
    key, digest = await idempotency.from_request(request)
    answer = await service.create(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        body,
        idempotency_key=key,
        digest=digest,
    )
    return idempotency.respond(answer)


@routes.get(
    "/v1/campaigns",
    summary="Your campaigns, newest first, with prospect counts by status",
    scope="campaigns:read",
    query=CampaignQuery,
    response=CampaignList,
)
async def list_campaigns(request: web.Request, query: CampaignQuery) -> CampaignList:
    return await service.list_campaigns(
        request.app[RESOURCES].db, principal_of(request).tenant_id, query
    )


@routes.get(
    "/v1/campaigns/{campaign_id}",
    summary="A campaign: its configuration, status and prospect counts by status",
    scope="campaigns:read",
    response=Campaign,
    errors=(404,),
)
async def get_campaign(request: web.Request) -> Campaign:
    return await service.get(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        service.parse_id(request.match_info["campaign_id"]),
    )


def _lifecycle(action: str, summary: str) -> None:
    async def handler(request: web.Request) -> Campaign:
        return await service.move(
            request.app[RESOURCES].db,
            principal_of(request).tenant_id,
            service.parse_id(request.match_info["campaign_id"]),
            action,
        )

    handler.__name__ = f"{action}_campaign"
    routes.post(
        f"/v1/campaigns/{{campaign_id}}/{action}",
        summary=summary,
        scope="campaigns:write",
        response=Campaign,
        errors=(404, 409),
    )(handler)


_lifecycle("start", "Start a draft campaign: the dialer begins (campaign.started)")
_lifecycle("pause", "Pause: nothing new is dialled; calls in progress finish")
_lifecycle("resume", "Resume a paused campaign")
_lifecycle("cancel", "Cancel: pending prospects are canceled; calls in progress finish")


@routes.post(
    "/v1/campaigns/{campaign_id}/prospects",
    summary="Add prospects: counts added / duplicates / suppressed (DNC, opt-outs) and the "
    "rejects with their index; send Idempotency-Key to retry safely",
    scope="campaigns:write",
    body=ProspectsIn,
    response=ProspectsAdded,
    errors=(404, 409),
)
async def add_prospects(request: web.Request, body: ProspectsIn) -> web.Response:
    campaign_id = service.parse_id(request.match_info["campaign_id"])
    key, digest = await idempotency.from_request(request, f"/v1/campaigns/{campaign_id}/prospects")
    answer = await service.add(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        campaign_id,
        body,
        idempotency_key=key,
        digest=digest,
    )
    return idempotency.respond(answer)


@routes.get(
    "/v1/campaigns/{campaign_id}/prospects",
    summary="A campaign's prospects in import order (status, reason, attempts); ?status= filters",
    scope="campaigns:read",
    query=ProspectQuery,
    response=ProspectList,
    errors=(404,),
)
async def list_prospects(request: web.Request, query: ProspectQuery) -> ProspectList:
    return await service.prospects(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        service.parse_id(request.match_info["campaign_id"]),
        query,
    )


@routes.get(
    "/v1/dids",
    summary="Your numbers with their health: calls, answer and short-call rates over the "
    "window, and whether each is resting (not chosen by local presence)",
    scope="campaigns:read",
    query=dids.DidQuery,
    response=dids.DidList,
)
async def list_dids(request: web.Request, query: dids.DidQuery) -> dids.DidList:
    res = request.app[RESOURCES]
    return await dids.list_dids(
        res.db,
        principal_of(request).tenant_id,
        query,
        res.settings.campaigns.did_health.window,
    )
