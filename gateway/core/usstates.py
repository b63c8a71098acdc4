"""US state codes: where a recipient lives, as callers may tell the API (`state`).

Calling-hour rules and frequency caps are state law, and the law that applies is the one of
where the person is, which the area code only guesses. A caller that knows the recipient's
address passes its state; the guardrails then apply that state's rules (and, by default, its
time zones) as well as the area code's (config/guardrails.toml).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

# The 50 states, DC, and the territories in the NANP with US law (USPS codes).
US_STATES: frozenset[str] = frozenset(
    """
    AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ
    NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR VI GU MP AS
    """.split()
)


def normalize_state(raw: object) -> str:
    """`raw` as an upper-case USPS state code, or ValueError saying why."""
    if not isinstance(raw, str):
        raise ValueError('state must be a two-letter US state code, e.g. "FL"')
    code = raw.strip().upper()
    if code not in US_STATES:
        raise ValueError(f'{raw!r} is not a US state code (two letters, e.g. "FL")')
    return code


USState = Annotated[str, BeforeValidator(normalize_state)]
