"""E.164 phone numbers: one normalisation used by the API, the pipeline and the providers."""

from __future__ import annotations

import re
from typing import Annotated

import phonenumbers
from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

DEFAULT_REGION = "US"

# The numbers this process has normalized, by E.164: parsed, and their type. The guardrails
# place a recipient from both (guardrails/calling_hours.py), and parsing and typing are the
# slow part of both (~25 and ~15 µs): a request's number is parsed and typed once, when the
# API validates it, not again by the chain.
_KNOWN: dict[str, tuple[phonenumbers.PhoneNumber, int]] = {}
_KNOWN_MAX = 65536
# A NANP number in E.164 as stored: +1, then ten digits, the first not 0 or 1 (so no national
# prefix to strip, no leading zero, no extension).
_NANP = re.compile(r"\+1[2-9][0-9]{9}")


def _nanp(text: str) -> phonenumbers.PhoneNumber | None:
    """`text` built as the number parsing it gives (checked against parse in the tests), in
    ~1 µs not ~20, when it is a NANP number in E.164 form; None for any other shape."""
    if _NANP.fullmatch(text) is None:
        return None
    return phonenumbers.PhoneNumber(country_code=1, national_number=int(text[2:]))


def typed_e164(number: str) -> tuple[phonenumbers.PhoneNumber, str, int]:
    """An E.164 number parsed (NumberParseException if it is none), formatted back to E.164
    and its `phonenumbers.PhoneNumberType`, from memory when this process has normalized it.
    Treat the parsed number as read-only: it may be shared."""
    found = _KNOWN.get(number)
    if found is not None:
        return found[0], number, found[1]
    built = _nanp(number)  # a worker meets each recipient first (the API process typed it)
    if built is not None:
        return built, number, phonenumbers.number_type(built)
    parsed = phonenumbers.parse(number, None)
    return (
        parsed,
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
        phonenumbers.number_type(parsed),
    )


def is_known(number: str) -> bool:
    """Has this process normalized `number` (so typing it again costs nothing)?"""
    return number in _KNOWN


def _remember(e164: str, number: phonenumbers.PhoneNumber, ntype: int) -> None:
    if number.extension is not None:  # not what parsing the E.164 form gives
        return
    if len(_KNOWN) >= _KNOWN_MAX:
        _KNOWN.clear()
    _KNOWN[e164] = (number, ntype)


def normalize_e164(raw: str, region: str = DEFAULT_REGION) -> str:
    """`raw` as E.164, or PydanticCustomError('invalid_phone_number') saying why."""
    text = raw.strip()
    if text.lower().startswith("whatsapp:"):
        text = text[len("whatsapp:") :]
    if text in _KNOWN:  # this E.164 text was normalized (so found valid) before
        return text
    number = _nanp(text)  # E.164 as most clients send it: built, not parsed
    if number is None:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException as exc:
            raise PydanticCustomError(
                "invalid_phone_number", "not a phone number: {why}", {"why": str(exc)}
            ) from None
    # `is_valid_number` is exactly "its type is known" (both match the number's region's
    # patterns); asked as the type, the guardrails get it without matching them again.
    ntype = phonenumbers.number_type(number)
    if ntype == phonenumbers.PhoneNumberType.UNKNOWN:
        raise PydanticCustomError(
            "invalid_phone_number", "{raw} is not a valid phone number", {"raw": raw}
        )
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    _remember(e164, number, ntype)
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
