"""Twilio Lookup v2 as the `lookup` reputation provider (DID health).

GET https://lookups.twilio.com/v2/PhoneNumbers/{number}?Fields=line_type_intelligence,
sms_pumping_risk through the real SDK (routed like every Twilio call, so tests point it at the
fake Twilio). Lookup says nothing like "spam likely" of a number (carriers' call labels are
not in it); what it does say is mapped to flags:

| Lookup says                                    | flag             |
|------------------------------------------------|------------------|
| `valid: false`                                 | `invalid`        |
| `sms_pumping_risk.number_blocked: true`        | `blocked`        |
| `sms_pumping_risk.sms_pumping_risk_score` ≥ 75 | `high_risk`      |

The score is the pumping risk score over 100 (0 … 1); the line type is Lookup's own.
"""

from __future__ import annotations

from typing import Any

from gateway.providers.contracts import (
    PermanentProviderError,
    Reputation,
    ReputationProvider,
    TransientProviderError,
)
from gateway.providers.twilio.client import (
    TwilioConfig,
    TwilioError,
    TwilioRestClient,
    TwilioTransientError,
    _twilio_errors,
)

FIELDS = "line_type_intelligence,sms_pumping_risk"
HIGH_RISK = 75


class TwilioLookup(ReputationProvider):
    def __init__(self, config: TwilioConfig, *, name: str = "twilio") -> None:
        self.name = name
        self.client = TwilioRestClient(config)
        self._started = False

    async def lookup(self, number: str) -> Reputation:
        if not self._started:  # the SDK's session is made inside the running loop
            await self.client.start()
            self._started = True
        try:
            with _twilio_errors("lookup"):
                found = await self.client.sdk.lookups.v2.phone_numbers(number).fetch_async(
                    fields=FIELDS
                )
        except TwilioError as exc:
            if isinstance(exc, TwilioTransientError):
                raise TransientProviderError(str(exc), code="lookup_unavailable") from exc
            raise PermanentProviderError(str(exc), code="lookup_refused") from exc
        return reputation_of(number, self.name, found)

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.client.close()


def reputation_of(number: str, provider: str, found: Any) -> Reputation:
    pumping: dict[str, Any] = getattr(found, "sms_pumping_risk", None) or {}
    line: dict[str, Any] = getattr(found, "line_type_intelligence", None) or {}
    flags: list[str] = []
    if getattr(found, "valid", True) is False:
        flags.append("invalid")
    if pumping.get("number_blocked"):
        flags.append("blocked")
    score = pumping.get("sms_pumping_risk_score")
    if score is not None and score >= HIGH_RISK:
        flags.append("high_risk")
    return Reputation(
        number,
        provider,
        tuple(flags),
        None if score is None else round(score / 100, 4),
        line.get("type"),
        {"line_type_intelligence": line, "sms_pumping_risk": pumping},
    )
