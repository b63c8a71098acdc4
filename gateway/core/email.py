"""Email addresses: one validation and normalisation (email-validator, never a regex of ours).

No DNS lookups (`check_deliverability=False`): whether a domain has MX records is the relay's
business, and a lookup would put the network on the accept path (and in every test).
The domain is lower-cased and, when the local part is ASCII, IDNA-encoded (xn--…); the local
part is kept as given.
Suppression lists match addresses case-insensitively (`suppression_key`), as every mailbox
provider treats them, though RFC 5321 lets a local part be case-sensitive.
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.utils import parseaddr

from email_validator import EmailNotValidError, validate_email
from pydantic_core import PydanticCustomError

_NAMED = re.compile(r"^(?P<name>[^<>]*)<(?P<addr>[^<>]+)>$")


def normalize_address(raw: str) -> str:
    """`raw` (a bare address) normalised, or PydanticCustomError('invalid_email_address')."""
    text = raw.strip()
    try:
        found = validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise PydanticCustomError(
            "invalid_email_address",
            "{raw} is not a valid email address: {why}",
            {"raw": raw, "why": str(exc)},
        ) from None
    # The ASCII form (an internationalised domain IDNA-encoded) when the local part allows it:
    # any relay carries it, while a UTF-8 address needs SMTPUTF8 all the way.
    return found.ascii_email or found.normalized


def normalize_mailbox(raw: str) -> str:
    """A sender, bare (`billing@acme.com`) or with a display name (`Acme <billing@acme.com>`):
    the address normalised, the name kept, formatted as a header would carry it.

    One mailbox, no control characters: the stdlib's parseaddr is lenient (it picks *an*
    address out of a list, or out of a header injection), so the shape is checked first."""
    text = raw.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise PydanticCustomError(
            "invalid_email_address", "a sender must not contain control characters", {}
        )
    if "<" not in text:
        return normalize_address(text)
    named = _NAMED.match(text)
    if named is None:
        raise PydanticCustomError(
            "invalid_email_address", "{raw} is not one mailbox (Name <address>)", {"raw": raw}
        )
    name = parseaddr(f"{named['name']} <x@x.invalid>")[0]
    address = normalize_address(named["addr"])
    if not name:
        return address
    local, _, domain = address.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


def address_of(mailbox: str) -> str:
    """The bare address of a mailbox as `normalize_mailbox` wrote it."""
    return parseaddr(mailbox)[1] or mailbox


def domain_of(mailbox: str) -> str:
    return address_of(mailbox).rpartition("@")[2]


def suppression_key(address: str) -> str:
    """The form a suppression list is keyed by."""
    return address_of(address).strip().lower()
