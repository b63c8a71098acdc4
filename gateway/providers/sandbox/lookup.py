"""Sandbox reputation provider: deterministic flags by the number's last digit, no account.

| last digit | what the lookup says                      |
|------------|-------------------------------------------|
| 9          | flags `spam_likely`, score 0.9            |
| 8          | flags `scam_likely`, score 0.95           |
| 7          | the provider is unreachable (transient)   |
| any other  | clean, score 0.05                         |
"""

from __future__ import annotations

from gateway.providers.contracts import Reputation, ReputationProvider, TransientProviderError


class SandboxLookup(ReputationProvider):
    def __init__(self, *, name: str = "sandbox") -> None:
        self.name = name
        self.lookups = 0

    async def lookup(self, number: str) -> Reputation:
        self.lookups += 1
        last = number[-1:]
        if last == "7":
            raise TransientProviderError(
                "sandbox lookup unreachable", code="upstream_unavailable", ambiguous=False
            )
        flags, score = {"9": (("spam_likely",), 0.9), "8": (("scam_likely",), 0.95)}.get(
            last, ((), 0.05)
        )
        return Reputation(
            number, self.name, flags, score, "voip", {"sandbox": True, "last_digit": last}
        )
