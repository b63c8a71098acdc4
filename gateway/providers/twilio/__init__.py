"""Twilio (voice, SMS, WhatsApp): REST client on the real SDK, webhook verification, statuses."""

from gateway.providers.twilio.client import (
    DEFAULT_API_BASE_URL,
    IDEMPOTENCY_HEADER,
    CallReceipt,
    MessageReceipt,
    TwilioConfig,
    TwilioError,
    TwilioPermanentError,
    TwilioRestClient,
    TwilioTransientError,
)
from gateway.providers.twilio.signature import (
    CallStatus,
    InvalidTwilioSignature,
    MessageStatus,
    is_valid_signature,
    normalize_call_status,
    normalize_message_status,
    public_url,
    verify_request,
)

__all__ = [
    "DEFAULT_API_BASE_URL",
    "IDEMPOTENCY_HEADER",
    "CallReceipt",
    "CallStatus",
    "InvalidTwilioSignature",
    "MessageReceipt",
    "MessageStatus",
    "TwilioConfig",
    "TwilioError",
    "TwilioPermanentError",
    "TwilioRestClient",
    "TwilioTransientError",
    "is_valid_signature",
    "normalize_call_status",
    "normalize_message_status",
    "public_url",
    "verify_request",
]
