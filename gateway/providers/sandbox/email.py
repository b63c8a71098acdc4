"""The sandbox's email addresses: every outcome an email can have, with no account.

| address (any `+tag` allowed)         | what happens                                         |
|--------------------------------------|------------------------------------------------------|
| anything@sandbox.trunkline.dev, and any address not listed | sent → delivered               |
| bounced@sandbox.trunkline.dev        | sent → bounced (5.1.1, an asynchronous hard bounce)  |
| complained@sandbox.trunkline.dev     | sent → delivered → complained (marked as spam)       |
| deferred@sandbox.trunkline.dev       | refused for now on the first try (451 4.7.1, greylisted), then sent → delivered |
| unknown@sandbox.trunkline.dev        | refused at RCPT (550 5.1.1): bounced at once, never sent |

A bounce or complaint puts the address on the tenant's email suppression list, so use a
fresh `+tag` (bounced+1@…, bounced+2@…) for each test that needs a new one.
"""

from __future__ import annotations

from gateway.providers.contracts import (
    MessageStatus,
    PermanentProviderError,
    TransientProviderError,
)

DOMAIN = "sandbox.trunkline.dev"
BOUNCED = f"bounced@{DOMAIN}"
COMPLAINED = f"complained@{DOMAIN}"
DEFERRED = f"deferred@{DOMAIN}"
UNKNOWN = f"unknown@{DOMAIN}"

Receipts = list[tuple[MessageStatus, str | None]]
_RECEIPTS: dict[str, Receipts] = {
    "bounced": [("sent", None), ("bounced", "5.1.1")],
    "complained": [("sent", None), ("delivered", None), ("complained", "abuse")],
}
DELIVERED: Receipts = [("sent", None), ("delivered", None)]


def mailbox(address: str) -> str | None:
    """`bounced` for bounced+7@sandbox.trunkline.dev; None outside the sandbox's domain."""
    local, _, domain = address.lower().rpartition("@")
    if domain != DOMAIN:
        return None
    return local.partition("+")[0]


def receipts_for(address: str) -> Receipts:
    return _RECEIPTS.get(mailbox(address) or "", DELIVERED)


def refusal(address: str, tries: int) -> Exception | None:
    """What the sandbox 'server' answers at RCPT on try number `tries` (None: accepted)."""
    box = mailbox(address)
    if box == "unknown":
        return PermanentProviderError(
            f"550 5.1.1 <{address}>: Recipient address rejected: User unknown",
            code="5.1.1",
            ambiguous=False,
            outcome="bounced",
        )
    if box == "deferred" and tries <= 1:
        return TransientProviderError(
            f"451 4.7.1 <{address}>: Recipient address rejected: greylisted, try again later",
            code="4.7.1",
            ambiguous=False,
        )
    return None
