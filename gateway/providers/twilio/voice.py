"""Twilio as a voice provider: calls.create with signed status callbacks, TwiML for the rest.

- ``originate``: ``calls.create`` with a holding TwiML (the call waits, answered, for what the
  gateway does on answer), every progress event (initiated, ringing, answered, completed) sent
  to ``/webhooks/twilio/voice/status?key=<attempt key>`` — the key rides in the signed URL, so
  a callback that beats our commit of the CallSid still finds its call — and the attempt key
  as Twilio's idempotency token, so a retry after a timeout does not dial twice.
- ``hangup``: ``Status=completed`` (idempotent: a call already over is not an error).
- ``bridge``: to a SIP URI (an AI agent), the call is redirected to ``<Dial><Sip>``; two
  Twilio calls are joined in a ``<Conference>`` named after the first one.

Callbacks are mapped into the one call vocabulary by ``report_from_callback``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from gateway.core.actions import OutboundAction
from gateway.providers.contracts import (
    AmdResult,
    BridgeResult,
    CallRef,
    CallReport,
    CallSpec,
    OriginateResult,
    PermanentProviderError,
    ProviderError,
    SipTarget,
    TransientProviderError,
    VoiceProvider,
)
from gateway.providers.twilio.client import (
    TwilioConfig,
    TwilioError,
    TwilioPermanentError,
    TwilioRestClient,
    TwilioTransientError,
    _twilio_errors,
)
from gateway.providers.twilio.signature import normalize_call_status

VOICE_STATUS_PATH = "/webhooks/twilio/voice/status"
_CARRIER_SIP = frozenset({408, 500, 502, 503, 504})
_ANSWERED_BY: dict[str, AmdResult] = {
    "human": "human",
    "machine_start": "machine",
    "machine_end_beep": "machine",
    "machine_end_silence": "machine",
    "machine_end_other": "machine",
    "fax": "machine",
    "unknown": "notsure",
}


def hold_twiml(seconds: int) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="{seconds}"/></Response>'


class TwilioVoice(VoiceProvider):
    name = "twilio"
    fetches_status = True

    def __init__(
        self,
        config: TwilioConfig,
        *,
        public_base_url: str | None,
        default_from: str | None,
        hold_seconds: int = 600,
        client: TwilioRestClient | None = None,
    ) -> None:
        self.config = config
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.default_from = default_from
        self.hold_seconds = hold_seconds
        self.client = client or TwilioRestClient(config)

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    def status_callback(self, attempt_key: str, trace_id: str) -> str | None:
        if self.public_base_url is None:
            return None  # no public URL: Twilio cannot report progress (README)
        query = urlencode({"key": attempt_key, "trace_id": trace_id})
        return f"{self.public_base_url}{VOICE_STATUS_PATH}?{query}"

    async def _originate(
        self, action: OutboundAction, attempt_key: str, spec: CallSpec
    ) -> OriginateResult:
        from_ = action.from_ or self.default_from
        if not from_:
            raise PermanentProviderError(
                "Twilio needs a caller id: no voice DID and no providers.voice.default_from",
                code="no_sender",
                ambiguous=False,
            )
        try:
            receipt = await self.client.create_call(
                action.to,
                from_,
                twiml=hold_twiml(self.hold_seconds),
                status_callback=self.status_callback(attempt_key, spec.trace_id),
                ring_timeout=spec.ring_timeout,
                machine_detection=(
                    None
                    if not spec.amd
                    else "DetectMessageEnd"
                    if spec.amd_after_greeting
                    else "Enable"
                ),
                time_limit=spec.max_duration,  # Twilio's own cap too, should our hangup be late
                idempotency_key=attempt_key,
            )
        except TwilioError as exc:
            raise _provider_error(exc) from exc
        return OriginateResult(receipt.sid)

    async def _hangup(self, call: CallRef) -> None:
        if not call.provider_call_id:
            raise TransientProviderError("no CallSid yet", code="no_call_sid", ambiguous=False)
        try:
            await self.client.hangup_call(call.provider_call_id)
        except TwilioError as exc:
            raise _provider_error(exc) from exc

    async def fetch_status(self, call: CallRef) -> CallReport | None:
        """Ask Twilio for a call whose callbacks we may have lost (`client.calls(sid).fetch()`),
        read as a callback would be; None without a CallSid or for a status that says nothing."""
        if not call.provider_call_id:
            return None
        try:
            state = await self.client.fetch_call(call.provider_call_id)
        except TwilioError as exc:
            raise _provider_error(exc) from exc
        form = {"CallSid": state.sid, "CallStatus": state.twilio_status}
        if state.answered_by:
            form["AnsweredBy"] = state.answered_by
        report = report_from_callback(form, call.attempt_key)
        return None if report is None else replace(report, source="twilio:fetch")

    async def _bridge(self, call: CallRef, target: CallRef | SipTarget) -> BridgeResult:
        if isinstance(target, SipTarget):
            twiml = f"<Response><Dial><Sip>{escape(target.uri)}</Sip></Dial></Response>"
            await self._update(call, twiml)
            return BridgeResult(joined=True)
        room = escape(f"tl-{call.attempt_key}")
        twiml = f"<Response><Dial><Conference>{room}</Conference></Dial></Response>"
        await self._update(call, twiml)
        await self._update(target, twiml)
        return BridgeResult(joined=True)

    async def say_then_hangup(
        self, call: CallRef, text: str, *, after_greeting: bool = False
    ) -> None:
        """The call's TwiML replaced: <Say> the text, then <Hangup/> (Twilio ends it). After
        the greeting needs nothing more: a voicemail drop's call asked DetectMessageEnd, so
        its machine verdict comes once the greeting is over."""
        await self._update(call, f"<Response><Say>{escape(text)}</Say><Hangup/></Response>")

    async def _update(self, call: CallRef, twiml: str) -> None:
        if not call.provider_call_id:
            raise TransientProviderError("no CallSid yet", code="no_call_sid", ambiguous=False)
        try:
            with _twilio_errors("update call"):
                await self.client.sdk.calls(call.provider_call_id).update_async(twiml=twiml)
        except TwilioError as exc:
            raise _provider_error(exc) from exc


def _provider_error(exc: TwilioError) -> ProviderError:
    code = str(exc.code or exc.status or "timeout")
    if isinstance(exc, TwilioTransientError):
        return TransientProviderError(exc.message, code=code, ambiguous=exc.ambiguous)
    if isinstance(exc, TwilioPermanentError):
        return PermanentProviderError(exc.message, code=code, ambiguous=False)
    return TransientProviderError(exc.message, code=code, ambiguous=True)


def report_from_callback(form: Mapping[str, str], attempt_key: str) -> CallReport | None:
    """A Twilio voice status callback as a CallReport; None for what says nothing new."""
    status = normalize_call_status(form.get("CallStatus", ""))
    answered_by = _ANSWERED_BY.get(form.get("AnsweredBy", "").lower())
    sip = form.get("SipResponseCode")
    sip_code = int(sip) if sip and sip.isdigit() else None
    raw = {
        k: form[k]
        for k in ("CallStatus", "SequenceNumber", "AnsweredBy", "SipResponseCode")
        if k in form
    }
    common = {
        "provider": "twilio",
        "attempt_key": attempt_key,
        "provider_call_id": form.get("CallSid") or None,
        "source": "twilio:callback",
        "raw": raw,
    }
    if status in (None, "queued"):
        if answered_by is None:
            return None
        return CallReport(fact="amd", amd=answered_by, amd_detail=form.get("AnsweredBy"), **common)  # type: ignore[arg-type]
    error_code = None
    failover = False
    if status == "busy":
        error_code = "user_busy"
    elif status == "no_answer":
        error_code = "declined" if sip_code == 603 else "no_answer"
    elif status == "failed":
        failover = sip_code in _CARRIER_SIP
        error_code = (
            "not_found" if sip_code in (404, 410, 484, 604) else form.get("ErrorCode") or "failed"
        )
    elif status == "canceled":
        error_code = "canceled"
    return CallReport(
        status=status,
        sip_code=sip_code,
        sip_code_source="sip" if sip_code is not None else None,  # Twilio's SipResponseCode
        error_code=error_code,
        failover=failover,
        amd=answered_by if status == "answered" else None,
        amd_detail=form.get("AnsweredBy") if status == "answered" else None,
        **common,  # type: ignore[arg-type]
    )
