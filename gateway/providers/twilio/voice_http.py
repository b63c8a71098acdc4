"""Twilio's voice status callbacks into the one call vocabulary.

Signed like every Twilio webhook (checked against the public URL, see twilio/http.py). The
attempt key rides in the callback URL we gave Twilio, and the signature covers the URL, so a
callback names its call even before our commit of the CallSid has landed.
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.routing import RouteTable
from gateway.logs import get_logger
from gateway.pipeline.calls import VOICE
from gateway.providers.twilio.http import _twiml, _verified
from gateway.providers.twilio.voice import VOICE_STATUS_PATH, report_from_callback

log = get_logger(__name__)
routes = RouteTable(tag="provider webhooks")


@routes.post(
    VOICE_STATUS_PATH,
    summary="Twilio call status callback (signed)",
    public=True,
    stream="text/xml",
    errors=(403,),
)
async def twilio_voice_status(request: web.Request) -> web.Response:
    form = await _verified(request)
    key = request.query.get("key", "")
    report = report_from_callback({k: form[k] for k in form}, key) if key else None
    if report is None:
        log.info("ignored Twilio call callback", key=key, status=form.get("CallStatus"))
        return _twiml()
    await request.app[VOICE].service.apply_report(report)
    return _twiml()
