"""What the guardrail checks are configured with: the rules file plus the operator's policy.

Built once per process from settings (`GuardrailPolicy.from_settings`) and
validated there, so a bad rules file or a reply text that the content rules
would block stops the daemon at start-up instead of failing a send later.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.settings import (
    GUARDRAIL_CHECKS,
    ConfigError,
    GuardrailSettings,
    RateLimit,
    RateLimitSettings,
    Settings,
    TenantPolicy,
)
from guardrails.content import check_content
from guardrails.email_content import EmailContentRules
from guardrails.rules import DEFAULT_RULES_PATH, Rules, RulesError, load_rules
from guardrails.verdicts import Deny

# Which DNC sources block which purposes. Registries (national, state) cover telephone
# solicitations only; the tenant's own list, litigators and consumer revocations cover all.
SOURCES: tuple[str, ...] = (
    "internal",
    "national_registry",
    "state_registry",
    "litigator",
    "consumer_opt_out",
)
# An email unsubscribe (List-Unsubscribe, the link in the body) withdraws marketing consent;
# receipts and account notices still go (CAN-SPAM covers commercial messages).
MARKETING_ONLY: frozenset[str] = frozenset(
    {"national_registry", "state_registry", "email_unsubscribe"}
)


def blocks(source: str, purpose: str) -> bool:
    """Does an entry from `source` suppress an action with this purpose?"""
    return purpose == "marketing" or source not in MARKETING_ONLY


@dataclass(frozen=True)
class GuardrailPolicy:
    rules: Rules
    checks: tuple[str, ...]
    default: TenantPolicy
    tenants: Mapping[str, TenantPolicy]
    limits: RateLimitSettings
    confirmation_window: float
    channel_providers: Mapping[str, str] = field(default_factory=dict)
    email: EmailContentRules = field(
        default_factory=lambda: _email_rules(Settings().guardrails)  # the defaults
    )

    @classmethod
    def from_settings(cls, settings: Settings, rules: Rules | None = None) -> GuardrailPolicy:
        cfg = settings.guardrails
        if rules is None:
            path = cfg.rules_file or DEFAULT_RULES_PATH
            try:
                rules = load_rules(path)
            except (OSError, RulesError) as exc:
                raise ConfigError("guardrails.rules_file", str(path), str(exc)) from None
        tenants = {
            name: cfg.policy.model_copy(
                update={k: getattr(override, k) for k in override.model_fields_set}
            )
            for name, override in cfg.tenants.items()
        }
        policy = cls(
            rules=rules,
            checks=tuple(c for c in GUARDRAIL_CHECKS if c in cfg.checks),
            default=cfg.policy,
            tenants=MappingProxyType(tenants),
            limits=cfg.rate_limits,
            confirmation_window=cfg.optout_confirmation_window,
            channel_providers=MappingProxyType(
                {
                    "sms": settings.providers.sms.primary,
                    "whatsapp": settings.providers.whatsapp.primary,
                    "email": settings.providers.email.primary,
                }
            ),
            email=_email_rules(cfg),
        )
        policy._validate_reply_texts()
        return policy

    def for_tenant(self, name: str | None) -> TenantPolicy:
        if name is None:
            return self.default
        return self.tenants.get(name, self.default)

    def tenant_limit(self, tenant: str | None, which: str) -> RateLimit:
        own = self.for_tenant(tenant).rate_limits.get(which)  # type: ignore[call-overload]
        return own or getattr(self.limits, which)

    def sender_limit(self, number: str) -> RateLimit:
        return self.limits.senders.get(number, self.limits.sender)

    def _validate_reply_texts(self) -> None:
        """Keyword replies are sent by the system: they must pass the content rules themselves."""
        for where, policy in [("guardrails.policy", self.default)] + [
            (f"guardrails.tenants.{name}", p) for name, p in self.tenants.items()
        ]:
            for key in ("help_text", "optout_text", "optin_text"):
                text = getattr(policy, key)
                verdict = check_content(
                    text, channel="sms", purpose="transactional", rules=self.rules
                )
                if isinstance(verdict, Deny):
                    raise ConfigError(
                        f"{where}.{key}", text, f"blocked by the content rules: {verdict.reason}"
                    )


def _email_rules(cfg: GuardrailSettings) -> EmailContentRules:
    """The email content rules, each regular expression compiled once here: a bad one stops
    start-up with the key that holds it."""
    for key in ("unsubscribe_words", "postal_patterns"):
        for i, pattern in enumerate(getattr(cfg.email, key)):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"guardrails.email.{key}.{i}", pattern, str(exc)) from None
    return EmailContentRules(tuple(cfg.email.unsubscribe_words), tuple(cfg.email.postal_patterns))
