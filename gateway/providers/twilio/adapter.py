"""Twilio as a messaging provider: SMS and WhatsApp (`whatsapp:` addressing)."""

from __future__ import annotations

from urllib.parse import urlencode

from gateway.core.actions import OutboundAction
from gateway.providers.contracts import (
    MessagingProvider,
    PermanentProviderError,
    SendResult,
    StatusReport,
    TransientProviderError,
)
from gateway.providers.twilio.client import (
    TwilioConfig,
    TwilioError,
    TwilioPermanentError,
    TwilioRestClient,
    TwilioTransientError,
)
from gateway.settings import Settings

STATUS_PATH = "/webhooks/twilio/status"


class TwilioMessaging(MessagingProvider):
    name = "twilio"
    channels = frozenset({"sms", "whatsapp"})
    fetches_status = True

    def __init__(
        self,
        config: TwilioConfig,
        *,
        public_base_url: str | None,
        messaging_service_sid: str | None,
    ) -> None:
        self.config = config
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.messaging_service_sid = messaging_service_sid
        self.client = TwilioRestClient(config)

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioMessaging:
        cfg = settings.providers.twilio
        if not cfg.account_sid or cfg.auth_token is None:
            from gateway.settings import ConfigError

            raise ConfigError(
                "providers.twilio.account_sid",
                cfg.account_sid,
                "account_sid and auth_token are required when Twilio is enabled",
            )
        config = TwilioConfig(
            account_sid=cfg.account_sid,
            auth_token=cfg.auth_token.get_secret_value(),
            api_base_url=cfg.api_base_url,
            timeout=cfg.timeout,
        )
        return cls(
            config,
            public_base_url=settings.http.public_base_url,
            messaging_service_sid=cfg.messaging_service_sid,
        )

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    def status_callback(self, action: OutboundAction) -> str | None:
        """Where Twilio posts receipts; the trace id rides along so receipts join the trace."""
        if self.public_base_url is None:
            return None  # no public URL: receipts cannot reach us (documented in the README)
        return f"{self.public_base_url}{STATUS_PATH}?{urlencode({'trace_id': action.trace_id})}"

    async def fetch_status(self, provider_message_id: str) -> StatusReport | None:
        """Ask Twilio for a message whose receipt we may have lost (`client.messages(sid)
        .fetch()`); a status Twilio added after this code is None, as in a callback."""
        try:
            state = await self.client.fetch_message(provider_message_id)
        except TwilioError as exc:
            raise _provider_error(exc) from exc
        if state.status is None:
            return None
        return StatusReport(
            self.name,
            state.sid,
            state.status,
            state.error_code,
            {"MessageStatus": state.twilio_status, "ErrorCode": state.error_code},
            source="twilio:fetch",
        )

    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult:
        to, from_ = action.to, action.from_
        if action.channel == "whatsapp":
            to = f"whatsapp:{to}"
            from_ = f"whatsapp:{from_}" if from_ else None
        try:
            receipt = await self.client.send_message(
                to,
                from_,
                action.body or "",
                self.status_callback(action),
                messaging_service_sid=None if from_ else self.messaging_service_sid,
                idempotency_key=attempt_key,
            )
        except TwilioTransientError as exc:
            code = (
                "timeout"
                if exc.status is None and "timed out" in exc.message.lower()
                else str(exc.code or exc.status)
            )
            raise TransientProviderError(exc.message, code=code, ambiguous=exc.ambiguous) from exc
        except TwilioPermanentError as exc:
            raise PermanentProviderError(
                exc.message, code=str(exc.code or exc.status), ambiguous=False
            ) from exc
        except ValueError as exc:  # no sender and no messaging service
            raise PermanentProviderError(str(exc), code="no_sender", ambiguous=False) from exc
        return SendResult(receipt.sid, receipt.status or "queued")


def _provider_error(exc: TwilioError) -> TransientProviderError | PermanentProviderError:
    code = str(exc.code or exc.status or "timeout")
    if isinstance(exc, TwilioPermanentError):
        return PermanentProviderError(exc.message, code=code, ambiguous=False)
    ambiguous = exc.ambiguous if isinstance(exc, TwilioTransientError) else True
    return TransientProviderError(exc.message, code=code, ambiguous=ambiguous)
