"""Twilio's webhooks into Trunkline: delivery receipts and inbound messages.

Each request's `X-Twilio-Signature` is checked against the PUBLIC URL Twilio
called (settings `http.public_base_url`), not the URL we were reached on,
because a proxy in front changes the latter. Forged requests get 403, a
warning, a metric, and — when they name a message we know — an event on
that message's tenant, at most one per tenant a minute (gateway/providers/rejections.py).
"""

from __future__ import annotations

from aiohttp import web
from redis.exceptions import RedisError

from gateway.core.errors import Problem
from gateway.core.phone import normalize_e164
from gateway.events.outbox import NewEvent, emit
from gateway.http.middleware import METRICS
from gateway.http.routing import RouteTable
from gateway.logs import get_logger
from gateway.messages import repo
from gateway.messages.inbound import receive
from gateway.messages.service import apply_report
from gateway.providers import rejections
from gateway.providers.contracts import StatusReport
from gateway.providers.twilio.signature import (
    InvalidTwilioSignature,
    normalize_message_status,
    verify_request,
)
from gateway.resources import RESOURCES

log = get_logger(__name__)
routes = RouteTable(tag="provider webhooks")
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _twiml(text: str = TWIML_EMPTY) -> web.Response:
    return web.Response(text=text, content_type="text/xml")


async def _verified(request: web.Request):
    settings = request.app[RESOURCES].settings
    cfg = settings.providers.twilio
    if not cfg.enabled or cfg.auth_token is None or not settings.http.public_base_url:
        raise Problem(
            "Twilio webhooks are not configured on this gateway", status=404, code="not_found"
        )
    try:
        return await verify_request(
            request,
            auth_token=cfg.auth_token.get_secret_value(),
            public_base_url=settings.http.public_base_url,
        )
    except InvalidTwilioSignature:
        await _forged(request)
        raise Problem(
            "the X-Twilio-Signature does not match", status=403, code="invalid_signature"
        ) from None


async def _forged(request: web.Request) -> None:
    metrics = request.app[METRICS]
    metrics.counter(
        "trunkline_webhook_signature_rejected_total", "Provider webhooks with a bad signature"
    ).inc(provider="twilio")
    log.warning("forged or misaddressed Twilio webhook", path=request.path, remote=request.remote)
    form = (
        await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
    )
    sid = form.get("MessageSid") or form.get("SmsSid")
    if not isinstance(sid, str) or not sid:
        return
    res = request.app[RESOURCES]
    msg = await repo.message_by_provider_ref(res.db, "twilio", sid)
    if msg is None:
        return
    try:
        admission = await rejections.admit_event(res.redis, "twilio", str(msg["tenant_id"]))
    except RedisError as exc:  # without the bound, write nothing: a forger must not get through
        log.warning("signature rejection not recorded", error=f"{type(exc).__name__}: {exc}")
        return
    if not admission.record:
        metrics.counter(
            "trunkline_webhook_signature_events_suppressed_total",
            "Rejected provider webhooks not written to a tenant's timeline (over the bound)",
        ).inc(provider="twilio")
        return
    async with res.db.acquire() as conn, conn.transaction():
        await emit(
            conn,
            NewEvent(
                msg["tenant_id"],
                "webhook.signature_rejected",
                str(msg["id"]),
                msg["trace_id"],
                {
                    "provider": "twilio",
                    "path": request.path,
                    "remote": request.remote,
                    "suppressed": admission.suppressed,
                    "window_seconds": rejections.WINDOW_SECONDS,
                },
            ),
        )


@routes.post(
    "/webhooks/twilio/status",
    summary="Twilio message status callback (signed)",
    public=True,
    stream="text/xml",
    errors=(403,),
)
async def twilio_status(request: web.Request) -> web.Response:
    form = await _verified(request)
    sid = form.get("MessageSid") or form.get("SmsSid")
    raw_status = form.get("MessageStatus") or form.get("SmsStatus")
    status = normalize_message_status(raw_status or "")
    if not sid or status is None:
        log.info("ignored Twilio status callback", sid=sid, status=raw_status)
        return _twiml()
    await apply_report(
        request.app[RESOURCES].db,
        StatusReport(
            "twilio", sid, status, form.get("ErrorCode") or None, {k: form[k] for k in form}
        ),
    )
    return _twiml()


@routes.post(
    "/webhooks/twilio/inbound",
    summary="Twilio inbound SMS/WhatsApp (signed)",
    public=True,
    stream="text/xml",
    errors=(403,),
)
async def twilio_inbound(request: web.Request) -> web.Response:
    form = await _verified(request)
    raw_from, raw_to = form.get("From", ""), form.get("To", "")
    channel = "whatsapp" if raw_from.lower().startswith("whatsapp:") else "sms"
    try:
        from_number, to_number = normalize_e164(raw_from), normalize_e164(raw_to)
    except ValueError:
        log.info("ignored inbound message with an unusable number", frm=raw_from, to=raw_to)
        return _twiml()
    await receive(
        request.app[RESOURCES].db,
        provider="twilio",
        provider_message_id=form.get("MessageSid", ""),
        channel=channel,
        from_number=from_number,
        to_number=to_number,
        body=form.get("Body", ""),
    )
    return _twiml()
