"""Response body of GET /v1/limits."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RateLimitInfo(BaseModel):
    limit: str = Field(description="tenant, api_key, sender, destination or provider_cps")
    applies_to: str = Field(description="what one bucket counts")
    rate: float = Field(description="sustained actions per second")
    burst: int = Field(description="actions allowed at once on top of the rate")
    remaining: int | None = Field(
        default=None, description="actions that would pass right now (your tenant and key buckets)"
    )


class FrequencyCapInfo(BaseModel):
    rule: str
    citation: str
    states: list[str]
    max: int
    window_hours: int
    scope: str = Field(description="the statute's scope, as the rules file records it")
    counted: str = Field(
        description="how the gateway counts it: per_number = every contact of the tenant to the "
        "number in the window, whatever its subject (the API has no subject to tell them apart, "
        "so a same_subject cap is counted at least as strictly as the statute asks)"
    )
    channels: list[str]
    purposes: list[str]


class Limits(BaseModel):
    checks: list[str] = Field(
        description="the guardrail checks every outbound action passes, in order"
    )
    rules_version: str
    exempt_transactional_from_calling_hours: bool
    rate_limits: list[RateLimitInfo]
    frequency_caps: list[FrequencyCapInfo]
