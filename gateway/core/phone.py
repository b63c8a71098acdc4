"""E.164 phone numbers: one normalisation used by the API, the pipeline and the providers."""

from __future__ import annotations

from typing import Annotated

import phonenumbers
from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

DEFAULT_REGION = "US"

# The numbers this process has normalized, parsed, by E.164: the guardrails place a recipient
# from its parsed number (guardrails/calling_hours.py), and parsing is the slow part of both
# (~50 µs): a request's number is parsed once, not once here and once there.
_PARSED: dict[str, phonenumbers.PhoneNumber] = {}
_PARSED_MAX = 65536


def parsed_e164(number: str) -> phonenumbers.PhoneNumber:
    """An E.164 number parsed (NumberParseException if it is none), from memory when this
    process has normalized it. Treat the result as read-only: it may be shared."""
    found = _PARSED.get(number)
    return found if found is not None else phonenumbers.parse(number, None)


def _remember(e164: str, number: phonenumbers.PhoneNumber) -> None:
    if number.extension is not None:  # not what parsing the E.164 form gives
        return
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[e164] = number


def normalize_e164(raw: str, region: str = DEFAULT_REGION) -> str:
    """`raw` as E.164, or PydanticCustomError('invalid_phone_number') saying why."""
    text = raw.strip()
    if text.lower().startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise PydanticCustomError(
            "invalid_phone_number", "not a phone number: {why}", {"why": str(exc)}
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise PydanticCustomError(
            "invalid_phone_number", "{raw} is not a valid phone number", {"raw": raw}
        )
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    _remember(e164, number)
    return e164


# What the schema promises a client: the shapes normalize_e164 takes (E.164, or a national
# number written with spaces, dots, dashes, brackets or letters, optionally `whatsapp:`), so a
# schema-driven client knows a number is checked; the answer always carries the E.164 form.
PHONE_PATTERN = r"^(whatsapp:)?\+?[0-9A-Za-z ().\-]{6,40}$"
E164 = Annotated[
    str,
    AfterValidator(normalize_e164),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": PHONE_PATTERN,
            "maxLength": 49,
            "description": "a phone number: E.164 (+14155550100) or national (US default); "
            "stored and answered in E.164",
            "examples": ["+14155550100"],
        }
    ),
]
