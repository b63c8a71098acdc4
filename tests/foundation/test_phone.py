"""E.164 normalization: validity asked as the number's type (so the guardrails reuse it)."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from pydantic_core import PydanticCustomError

from gateway.core.phone import normalize_e164, typed_e164

# Valid and invalid numbers of regions sharing a calling code (NANP, +44 with its crown
# dependencies, +7), non-geographic entities (+800, +882), short and overlong ones.
SAMPLES = [
    "+12125550123",
    "+12015550123",
    "+14165550123",  # Canada
    "+18095550123",  # Dominican Republic
    "+11235550123",  # no NPA 123
    "+447911123456",
    "+447624123456",  # Isle of Man
    "+441624123456",
    "+74951234567",
    "+77012345678",  # Kazakhstan
    "+80012345678",
    "+882345678901",
    "+4930123456",
    "+493012",
    "+61412345678",
    "+6141234567890123",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_valid_exactly_when_typed(text: str) -> None:
    """normalize_e164 refuses exactly what phonenumbers.is_valid_number refuses, and what it
    remembers for the chain is the type phonenumbers gives the number."""
    parsed = phonenumbers.parse(text, None)
    if phonenumbers.is_valid_number(parsed):
        e164 = normalize_e164(text)
        assert e164 == phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        known, formatted, ntype = typed_e164(e164)
        assert formatted == e164
        assert ntype == phonenumbers.number_type(parsed) != phonenumbers.PhoneNumberType.UNKNOWN
        assert known.country_code == parsed.country_code
        assert known.national_number == parsed.national_number
    else:
        with pytest.raises(PydanticCustomError) as refused:
            normalize_e164(text)
        assert refused.value.type == "invalid_phone_number"
        assert "is not a valid phone number" in str(refused.value)


def test_typed_e164_of_a_number_never_normalized() -> None:
    parsed, e164, ntype = typed_e164("+12125550199")
    assert e164 == "+12125550199"
    assert ntype == phonenumbers.number_type(parsed)
    with pytest.raises(phonenumbers.NumberParseException):
        typed_e164("not a number")


def test_typed_e164_of_a_nanp_number_is_what_parsing_gives() -> None:
    """A +1 number of ten digits starting 2-9 is built without phonenumbers.parse (the
    dispatch worker's first sight of a recipient): equal to the parsed one, same E.164 and
    type, for numbers of every first digit (valid, unassigned, toll-free, premium, N11)."""
    rng = random.Random(14)
    numbers = ["+12005550100", "+18005550199", "+19005550123", "+12125550199", "+14115550123"]
    numbers += [f"+1{rng.randint(2, 9)}{rng.randrange(10**9):09d}" for _ in range(3000)]
    for number in numbers:
        parsed = phonenumbers.parse(number, None)
        fast, e164, ntype = typed_e164(number)
        assert fast == parsed, number
        assert e164 == phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        assert ntype == phonenumbers.number_type(parsed), number
    for other in ("+11235550123", "+10235550123", "+1212555012", "+121255501234", "+1 212"):
        try:  # any other shape: parsed, as before
            parsed = phonenumbers.parse(other, None)
        except phonenumbers.NumberParseException:
            with pytest.raises(phonenumbers.NumberParseException):
                typed_e164(other)
            continue
        assert typed_e164(other)[0] == parsed


def test_normalize_e164_agrees_with_parsing_and_is_valid_number() -> None:
    """The API's validation takes E.164 NANP text without parsing it and answers a number it
    normalized before from memory: the same E.164, or the same refusal, as parsing and
    `is_valid_number` give, first time and again, for numbers of every first digit and
    other shapes."""
    rng = random.Random(15)
    numbers = [f"+1{rng.randint(2, 9)}{rng.randrange(10**9):09d}" for _ in range(2000)]
    numbers += ["+11235550123", " +12125550123 ", "whatsapp:+12125550123", "(212) 555-0123"]
    numbers += ["+447911123456", "+1212555012", "+121255501234"]
    for number in numbers:
        text = number.strip().removeprefix("whatsapp:")
        parsed = phonenumbers.parse(text, "US")
        for _ in range(2):
            if phonenumbers.is_valid_number(parsed):
                expected = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
                assert normalize_e164(number) == expected, number
            else:
                with pytest.raises(PydanticCustomError):
                    normalize_e164(number)
