"""Email routes: the unsubscribe link (no API key: its token is the credential), the
bounce/complaint webhooks (signed), and the tenant's suppression list (scope dnc:manage)."""

from __future__ import annotations

import html
from datetime import datetime

from aiohttp import web

from gateway.core.errors import NotFound, Problem
from gateway.emails import repo, service
from gateway.emails.schemas import (
    Applied,
    EmailEvents,
    Removed,
    Suppression,
    SuppressionDeleteQuery,
    SuppressionIn,
    SuppressionList,
    SuppressionQuery,
)
from gateway.emails.unsubscribe import UnsubscribeLinks
from gateway.http.auth import principal_of
from gateway.http.middleware import METRICS
from gateway.http.pagination import decode_cursor, page_of
from gateway.http.routing import RouteTable, json_response
from gateway.logs import get_logger
from gateway.pipeline.wiring import PIPELINE
from gateway.providers.smtp.dsn import MailReport, parse_report
from gateway.resources import RESOURCES
from gateway.webhooks import signing

log = get_logger(__name__)
routes = RouteTable(tag="email")
SCOPE = "dnc:manage"
MAX_REPORT_BYTES = 1_000_000

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1.25rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _masked(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}{'•' * min(max(len(local) - 1, 1), 6)}@{domain}"


def _links(request: web.Request) -> UnsubscribeLinks:
    return request.app[PIPELINE].links


async def _message_of(request: web.Request):
    message_id = await _links(request).verify(request.match_info["token"])
    if message_id is None:
        raise NotFound("this unsubscribe link is not valid", code="unsubscribe_link_invalid")
    return message_id


@routes.get(
    "/unsubscribe/{token}",
    summary="The page an email's unsubscribe link opens (no API key: the signed token is the "
    "credential); its button confirms with the one-click POST",
    public=True,
    stream="text/html",
    errors=(404,),
)
async def unsubscribe_page(request: web.Request) -> web.Response:
    message_id = await _message_of(request)
    msg = await repo.message_for_unsubscribe(request.app[RESOURCES].db, message_id)
    if msg is None or msg["channel"] != "email":
        raise NotFound("this unsubscribe link is not valid", code="unsubscribe_link_invalid")
    # A GET changes nothing: mail scanners open links to check them (RFC 8058 section 1).
    return _page(
        "Unsubscribe",
        f"<p>Stop marketing email from {html.escape(msg['tenant'])} to "
        f"<b>{html.escape(_masked(msg['to_number']))}</b>?</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        "<button type=submit>Unsubscribe</button></form>",
    )


@routes.post(
    "/unsubscribe/{token}",
    summary="Unsubscribe (RFC 8058 one-click: a POST with List-Unsubscribe=One-Click, sent by "
    "the mail client or the page's button); records the opt-out, answers a page",
    public=True,
    stream="text/html",
    errors=(404,),
)
async def unsubscribe_post(request: web.Request) -> web.Response:
    message_id = await _message_of(request)
    await request.read()  # the body is `List-Unsubscribe=One-Click`; nothing else is needed
    done = await service.unsubscribe(request.app[RESOURCES].db, message_id, origin="link")
    if done is None:
        raise NotFound("this unsubscribe link is not valid", code="unsubscribe_link_invalid")
    return _page(
        "You are unsubscribed",
        f"<p><b>{html.escape(_masked(done.address))}</b> will get no more marketing email "
        f"from {html.escape(done.tenant)}.</p>",
    )


# --- bounce and complaint webhooks -------------------------------------------------------


async def _verified(request: web.Request, raw: bytes) -> None:
    secret = request.app[RESOURCES].settings.email.webhook_secret
    if secret is None:
        raise NotFound("email webhooks are not configured on this gateway", code="not_found")
    header = request.headers.get(signing.HEADER, "")
    if not signing.verify(secret.get_secret_value(), raw, header):
        request.app[METRICS].counter(
            "trunkline_webhook_signature_rejected_total", "Provider webhooks with a bad signature"
        ).inc(provider="email")
        log.warning("forged or unsigned email webhook", path=request.path, remote=request.remote)
        raise Problem(
            f"the {signing.HEADER} header does not match", status=403, code="invalid_signature"
        )


async def _apply(request: web.Request, reports: list[MailReport], source: str) -> Applied:
    applied = 0
    for report in reports:
        if await service.apply_mail_report(request.app[RESOURCES].db, report, source=source):
            applied += 1
    return Applied(applied=applied, ignored=len(reports) - applied)


@routes.post(
    "/webhooks/email/events",
    summary="Bounces, complaints, delays and deliveries from an email provider, normalised "
    "(signed: Trunkline-Signature with email.webhook_secret); a bounce or complaint "
    "suppresses the address",
    public=True,
    body=EmailEvents,
    response=Applied,
    errors=(403, 404),
)
async def email_events(request: web.Request, body: EmailEvents) -> Applied:
    await _verified(request, await request.read())
    reports = [
        MailReport(
            {"delivered": "delivered", "complaint": "complaint", "delay": "delay"}.get(
                e.type, "bounce" if e.bounce_type == "permanent" else "delay"
            ),
            recipient=e.recipient,
            status=e.status,
            diagnostic=e.diagnostic,
            message_id=e.message_id.strip().strip("<>"),
        )
        for e in body.events
    ]
    providers = {e.provider for e in body.events if e.provider}
    source = f"webhook:{providers.pop()}" if len(providers) == 1 else "webhook:email"
    return await _apply(request, reports, source)


@routes.post(
    "/webhooks/email/dsn",
    summary="A bounce (DSN, multipart/report; report-type=delivery-status) or complaint (ARF "
    "feedback-report) as the raw mail (message/rfc822), e.g. piped from the bounce mailbox "
    "(signed like /webhooks/email/events)",
    public=True,
    response=Applied,
    errors=(403, 404, 413),
)
async def email_dsn(request: web.Request) -> Applied:
    raw = await request.read()
    if len(raw) > MAX_REPORT_BYTES:
        raise Problem("the report is too large", status=413, code="payload_too_large")
    await _verified(request, raw)
    return await _apply(request, parse_report(raw), "smtp:dsn")


# --- the suppression list ----------------------------------------------------------------


@routes.get(
    "/v1/email/suppressions",
    summary="Your email suppression list, newest first: bounces, complaints, unsubscribes and "
    "your own entries (cursor pagination)",
    scope=SCOPE,
    query=SuppressionQuery,
    response=SuppressionList,
)
async def list_suppressions(request: web.Request, query: SuppressionQuery) -> SuppressionList:
    after = decode_cursor("email_suppressions", query.cursor, (datetime, str, str))
    rows = await repo.list_suppressions(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        limit=query.limit,
        after=after,
        reason=query.reason,
        address=query.address,
    )
    page, cursor = page_of(
        "email_suppressions",
        rows,
        query.limit,
        lambda r: (r["created_at"], r["address"], r["reason"]),
    )
    return SuppressionList(
        data=[Suppression.model_validate(dict(r)) for r in page], next_cursor=cursor
    )


@routes.post(
    "/v1/email/suppressions",
    summary="Suppress an address yourself (201; 200 if it was already there for that reason)",
    scope=SCOPE,
    body=SuppressionIn,
    response=Suppression,
    status=201,
    also=(200,),
)
async def add_suppression(request: web.Request, body: SuppressionIn) -> web.Response:
    db = request.app[RESOURCES].db
    tenant_id = principal_of(request).tenant_id
    added = await repo.add_suppression(
        db, tenant_id, body.address, body.reason, origin="api", detail=body.detail
    )
    rows = await repo.list_suppressions(
        db, tenant_id, limit=1, after=(None, None, None), reason=body.reason, address=body.address
    )
    return json_response(Suppression.model_validate(dict(rows[0])), 201 if added else 200)


@routes.delete(
    "/v1/email/suppressions/{address}",
    summary="Take an address off your suppression list (every reason, or ?reason=)",
    scope=SCOPE,
    query=SuppressionDeleteQuery,
    response=Removed,
    errors=(404,),
)
async def remove_suppression(request: web.Request, query: SuppressionDeleteQuery) -> Removed:
    removed = await repo.remove_suppression(
        request.app[RESOURCES].db,
        principal_of(request).tenant_id,
        request.match_info["address"],
        query.reason,
    )
    if not removed:
        raise NotFound("that address is not on your suppression list", code="not_suppressed")
    return Removed(removed=removed)
