"""API key scopes. A key holds a set of these; `*` grants every scope."""

from __future__ import annotations

SCOPES: frozenset[str] = frozenset(
    {
        "messages:read",
        "messages:write",
        "calls:read",
        "calls:write",
        "events:read",
        "webhooks:manage",
        "dnc:manage",
        "dead_letters:manage",
        "keys:read",  # your tenant's keys (ids, names, scopes; never a secret)
        "usage:read",
        "campaigns:read",
        "campaigns:write",
        "ops:read",  # trunk-wide figures (every tenant's pool occupancy, provider breakers)
        "ivr:read",
        "ivr:write",
        "workflows:read",
        "workflows:write",
    }
)
ALL = "*"
# What a key gets when no scopes are asked for: everything about its own tenant. `ops:read`
# shows trunk-wide figures (other tenants' traffic in aggregate), so it is granted by name only.
DEFAULT: frozenset[str] = SCOPES - {"ops:read"}


def grants(held: list[str] | tuple[str, ...] | frozenset[str], needed: str | None) -> bool:
    return needed is None or ALL in held or needed in held


def validate(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - SCOPES - {ALL})
    if unknown:
        raise ValueError(
            f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))} or *"
        )
    return sorted(set(scopes))
