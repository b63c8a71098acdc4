"""Inbound Twilio webhooks: signature verification and status normalization.

Twilio signs the URL *it* requested (our public URL), so behind a reverse proxy
the request's own scheme/host/port are the wrong input: we rebuild the URL from
the configured public base URL plus the raw path and query the proxy forwarded.
Statuses are folded into Trunkline's one vocabulary here so nothing past the
adapter ever sees a Twilio spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping
from twilio.request_validator import (
    HMAC_SHA1,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

MessageStatus = Literal["queued", "sent", "delivered", "undelivered", "failed", "received"]
CallStatus = Literal[
    "queued",
    "dialing",
    "ringing",
    "answered",
    "completed",
    "busy",
    "no_answer",
    "failed",
    "canceled",
]

# Form-encoded params as aiohttp gives them, or a plain mapping; a str is a raw
# (JSON) body signed through the `bodySHA256` query parameter.
SignedParams = Mapping[str, str] | MultiMapping[str] | str


class InvalidTwilioSignature(Exception):
    """The request did not come from Twilio (or was altered, or hit a URL we don't own)."""


def public_url(public_base_url: str, raw_path_qs: str) -> str:
    """The URL Twilio requested: public base (what the proxy maps to our root) + path + query."""
    return public_base_url.rstrip("/") + "/" + raw_path_qs.lstrip("/")


def is_valid_signature(
    *,
    auth_token: str,
    url: str,
    params: SignedParams,
    signature: str | None,
    signature_settings: str | None = None,
) -> bool:
    """Check `X-Twilio-Signature` for `url` (the public one) with the SDK's own validator.

    `signature_settings` is the `X-Twilio-Webhooks-Signature-Settings` header; it
    only selects the HMAC algorithm here, the secret is always `auth_token`.
    """
    if not signature:
        return False
    if isinstance(params, str) and "bodySHA256" not in parse_qs(urlsplit(url).query):
        return False  # a raw body is only signed through bodySHA256 (the SDK would crash on it)
    algorithm = get_signature_algorithm(signature_settings) if signature_settings else HMAC_SHA1
    return bool(RequestValidator(auth_token).validate(url, params, signature, algorithm=algorithm))


async def verify_request(
    request: web.Request, *, auth_token: str, public_base_url: str
) -> MultiMapping[str]:
    """Verify an inbound Twilio webhook and return its form params (query params for a GET).

    Raises InvalidTwilioSignature; callers answer 403 and record it, never process it.
    """
    url = public_url(public_base_url, request.raw_path)
    params: SignedParams
    form: MultiMapping[str]
    if request.content_type == "application/x-www-form-urlencoded":
        posted = await request.post()
        form = MultiDictProxy(MultiDict((k, v) for k, v in posted.items() if isinstance(v, str)))
        params = form
    elif request.can_read_body:
        params = await request.text()  # JSON body: covered by ?bodySHA256= in the URL
        form = MultiDictProxy(MultiDict())
    else:
        params = {}
        form = request.query
    valid = is_valid_signature(
        auth_token=auth_token,
        url=url,
        params=params,
        signature=request.headers.get(SIGNATURE_HEADER),
        signature_settings=request.headers.get(SIGNATURE_SETTINGS_HEADER),
    )
    if not valid:
        raise InvalidTwilioSignature(f"bad {SIGNATURE_HEADER} for {url}")
    return form


_MESSAGE_STATUS: dict[str, MessageStatus] = {
    "accepted": "queued",  # Messaging Service took it, sender not chosen yet
    "scheduled": "queued",
    "queued": "queued",
    "sending": "queued",  # still inside Twilio, not handed to the carrier
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",  # WhatsApp/RCS read receipt: delivered and then some
    "partially_delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",  # a scheduled message canceled before sending: it never left
    "receiving": "received",
    "received": "received",
}

_CALL_STATUS: dict[str, CallStatus] = {
    "queued": "queued",
    "initiated": "dialing",
    "ringing": "ringing",
    "in-progress": "answered",
    "answered": "answered",  # the StatusCallbackEvent name, in case it is passed instead
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "canceled",
}


def normalize_message_status(twilio_status: str) -> MessageStatus | None:
    """Twilio MessageStatus → Trunkline status; None for a status Twilio added after this code.

    Unknown is returned rather than raised so a webhook handler records it instead of
    answering 500 and having Twilio retry a status we will never understand.
    """
    return _MESSAGE_STATUS.get(twilio_status.strip().lower())


def normalize_call_status(twilio_status: str) -> CallStatus | None:
    """Twilio CallStatus → Trunkline status; None when unknown (see normalize_message_status)."""
    return _CALL_STATUS.get(twilio_status.strip().lower().replace("_", "-"))
