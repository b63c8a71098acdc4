"""The one settings model: defaults < TOML file < environment (TRUNKLINE_…, nested with __)."""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AwareDatetime, BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_config_file: ContextVar[Path | None] = ContextVar("trunkline_config_file", default=None)


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_base_url: str | None = Field(
        default=None,
        description="URL providers call us back on (behind a proxy it differs from the request URL).",
    )
    shutdown_timeout: float = Field(
        default=30.0, gt=0, description="Seconds in-flight work may take after SIGTERM."
    )
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    reuse_port: bool = Field(
        default=False,
        description="SO_REUSEPORT: several API processes share the port (one per core).",
    )
    idempotency_wait: float = Field(
        default=10.0,
        gt=0,
        description="seconds a duplicate of an in-flight keyed request waits for its answer "
        "(then 409 idempotency_key_in_use with Retry-After)",
    )
    idempotency_lease: float = Field(
        default=5.0,
        gt=0,
        description="seconds a keyed request's claim outlives a try that died (renewed while "
        "it works); then a waiting duplicate takes the key over",
    )


class DatabaseSettings(_Section):
    url: SecretStr | None = Field(
        default=None, description="postgresql:// URL; unset in dev mode = private server"
    )
    min_size: int = Field(default=2, ge=0)
    max_size: int = Field(default=10, ge=1)
    command_timeout: float = Field(default=30.0, gt=0)
    migrate_on_start: bool = True


class RedisSettings(_Section):
    url: SecretStr | None = Field(
        default=None, description="redis:// or unix:// URL; unset in dev mode = private server"
    )
    max_connections: int = Field(default=64, ge=1)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class WorkerSettings(_Section):
    restart_backoff_max: float = Field(default=30.0, gt=0)


class ChannelRoute(_Section):
    primary: str = Field(default="sandbox", description="provider used for this channel")
    fallback: str | None = Field(
        default=None, description="provider used while the primary's breaker is open"
    )
    default_from: str | None = Field(
        default=None, description="sender when the tenant owns no DID for the channel"
    )


class SandboxSettings(_Section):
    enabled: bool = True
    receipt_delay: float = Field(
        default=0.05, ge=0, description="seconds between simulated receipts"
    )
    agent_connect_delay: float = Field(
        default=0.0, ge=0, description="seconds a slow sandbox agent leg takes to answer"
    )
    agent_slow_every: int = Field(
        default=0, ge=0, description="every Nth sandbox agent leg is slow (0: none)"
    )


class TwilioSettings(_Section):
    enabled: bool = False
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    api_base_url: str = "https://api.twilio.com"
    messaging_service_sid: str | None = None
    timeout: float = Field(default=10.0, gt=0)


class SmtpSettings(_Section):
    """The SMTP email adapter (provider `smtp`): any relay, over STARTTLS, TLS or plain."""

    enabled: bool = False
    host: str | None = Field(default=None, description="the relay's host name (required)")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="default: 587 starttls, 465 tls, 25 none"
    )
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: upgrade after EHLO (required, not opportunistic); tls: TLS from "
        "the first byte (SMTPS); none: plain text (a local relay only)",
    )
    username: str | None = None
    password: SecretStr | None = None
    validate_certs: bool = True
    ca_file: Path | None = Field(
        default=None, description="PEM bundle of the CAs to trust (a relay with a private CA)"
    )
    timeout: float = Field(default=30.0, gt=0, description="seconds per SMTP command")
    max_connections: int = Field(
        default=4,
        ge=1,
        description="SMTP connections per worker process, kept open between emails",
    )
    message_id_domain: str | None = Field(
        default=None, description="right-hand side of our Message-IDs (default: the From domain)"
    )
    bounce_address: str | None = Field(
        default=None,
        description="envelope sender (MAIL FROM) that bounces (DSNs) go to; default: the From",
    )

    @model_validator(mode="after")
    def _complete(self) -> SmtpSettings:
        if self.enabled and not self.host:
            raise ValueError("providers.smtp.host is required when providers.smtp.enabled")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both providers.smtp.username and providers.smtp.password")
        if self.username is not None and self.security == "none":
            raise ValueError("SMTP AUTH needs security starttls or tls (no password in clear)")
        return self

    def effective_port(self) -> int:
        return self.port or {"starttls": 587, "tls": 465, "none": 25}[self.security]


class EmailSettings(_Section):
    """The email channel: unsubscribe links and the bounce/complaint webhook."""

    unsubscribe_secret: SecretStr | None = Field(
        default=None,
        description="key the unsubscribe links are signed with (default: one generated and kept "
        "in PostgreSQL, shared by every process)",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="shared secret of POST /webhooks/email/events and /webhooks/email/dsn "
        "(Trunkline-Signature: t=…,v1=HMAC-SHA256); unset: those webhooks answer 404",
    )
    unsubscribe_mailto: str | None = Field(
        default=None,
        description="an address also offered in List-Unsubscribe (mailto:), besides our link",
    )


class BreakerSettings(_Section):
    window_seconds: float = Field(
        default=30.0, gt=0, description="sliding window for the error rate"
    )
    min_calls: int = Field(
        default=20, ge=1, description="calls in the window before the breaker may open"
    )
    error_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    open_seconds: float = Field(
        default=30.0, gt=0, description="how long an open breaker refuses calls"
    )
    half_open_max_calls: int = Field(
        default=2, ge=1, description="concurrent trial calls when half-open"
    )


class ProvidersSettings(_Section):
    breaker: BreakerSettings = BreakerSettings()
    sms: ChannelRoute = ChannelRoute()
    whatsapp: ChannelRoute = ChannelRoute()
    voice: ChannelRoute = ChannelRoute()
    email: ChannelRoute = ChannelRoute(default_from="noreply@example.com")
    sandbox: SandboxSettings = SandboxSettings()
    twilio: TwilioSettings = TwilioSettings()
    smtp: SmtpSettings = SmtpSettings()

    @model_validator(mode="after")
    def _email_sender(self) -> ProvidersSettings:
        from gateway.core.email import normalize_mailbox  # email-validator, no DNS lookups

        if self.email.default_from is not None:
            try:
                self.email.default_from = normalize_mailbox(self.email.default_from)
            except ValueError as exc:
                raise ValueError(f"providers.email.default_from: {exc}") from None
        return self


class MessagingSettings(_Section):
    max_attempts: int = Field(
        default=6, ge=1, description="provider tries before a message is dead-lettered"
    )
    dispatch_concurrency: int = Field(
        default=128, ge=1, description="sends in flight per worker process"
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="a claimed job returns to the queue after this"
    )


class ReceiptsSettings(_Section):
    """The receipt reconciler (worker role): asks providers what a lost callback said."""

    interval: float = Field(default=60.0, gt=0, description="seconds between rounds")
    message_age: float = Field(
        default=600.0,
        gt=0,
        description="a message queued/sent at the provider this long without news is asked about",
    )
    call_age: float = Field(
        default=300.0,
        gt=0,
        description="a call short of its end this long without news is asked about "
        "(and again every call_age while it lasts)",
    )
    give_up_after: float = Field(
        default=72 * 3600.0, gt=0, description="older than this (no news), nobody asks any more"
    )
    batch: int = Field(default=200, ge=1, description="messages, and calls, asked about per round")
    concurrency: int = Field(default=8, ge=1, description="provider lookups in flight")
    fetch_timeout: float = Field(default=15.0, gt=0, description="seconds per provider lookup")


class EventsSettings(_Section):
    retention: float = Field(
        default=604800.0, gt=0, description="seconds events are kept in the log (default 7 days)"
    )
    prune_interval: float = Field(default=300.0, gt=0, description="seconds between retention runs")
    prune_batch: int = Field(default=5000, ge=1, description="events deleted per transaction")
    sequencer_batch: int = Field(default=1000, ge=1, description="events numbered per transaction")
    sequencer_interval: float = Field(
        default=1.0,
        gt=0,
        description="safety timer (and standby lock retry) when no NOTIFY wakes the sequencer",
    )
    subscriber_batch: int = Field(
        default=500, ge=1, description="events a log-tailing subscriber reads per step"
    )
    subscriber_interval: float = Field(
        default=5.0, gt=0, description="safety timer of the log-tailing subscribers"
    )
    subscriber_settle: float = Field(
        default=0.05,
        ge=0,
        description="seconds a woken subscriber waits so a burst of commits is read as one batch",
    )
    sse_heartbeat: float = Field(
        default=15.0, gt=0, description="seconds between keep-alive comments"
    )
    sse_retry_ms: int = Field(default=3000, ge=0, description="`retry:` hint sent to SSE clients")
    sse_client_buffer: int = Field(
        default=1000, ge=1, description="events queued per SSE client before it is cut off"
    )
    sse_flush_interval: float = Field(
        default=0.02,
        ge=0,
        description="while events keep coming, the SSE hub writes each client at most once per "
        "this many seconds (an event that finds it idle goes out at once)",
    )
    hub_resync_interval: float = Field(
        default=5.0,
        gt=0,
        description="idle seconds before the SSE hub checks the log for lost events",
    )
    replay_page: int = Field(default=500, ge=1, description="events read per query when replaying")


class WebhookSettings(_Section):
    timeout: float = Field(default=10.0, gt=0, description="seconds per delivery request")
    concurrency: int = Field(
        default=16, ge=1, description="deliveries in flight per worker process"
    )
    retry_base: float = Field(default=5.0, gt=0, description="first retry delay (seconds); doubles")
    retry_max_delay: float = Field(
        default=3600.0, gt=0, description="longest delay between retries"
    )
    retry_window: float = Field(
        default=86400.0,
        gt=0,
        description="seconds a delivery is retried before it is dead-lettered",
    )
    disable_after: float = Field(
        default=259200.0,
        ge=0,
        description="an endpoint failing continuously this long (no success) is disabled",
    )
    allow_private_targets: bool = Field(
        default=False,
        description="allow URLs that resolve to loopback/private/link-local addresses (SSRF guard off)",
    )
    delivery_retention: float = Field(
        default=2592000.0, gt=0, description="seconds finished delivery records are kept"
    )


GUARDRAIL_CHECKS = ("suppression", "content", "rate_limits", "calling_hours")


class RateLimit(_Section):
    rate: float = Field(gt=0, description="sustained actions per second")
    burst: int = Field(ge=1, description="actions allowed at once on top of the sustained rate")


class RateLimitSettings(_Section):
    """GCRA buckets in Redis, checked together in one Lua call at accept time."""

    tenant: RateLimit = RateLimit(rate=50.0, burst=100)
    api_key: RateLimit = RateLimit(rate=20.0, burst=40)
    sender: RateLimit = Field(
        default=RateLimit(rate=1.0, burst=1),
        description="per sending number (a US long code carries about 1 message/s)",
    )
    senders: dict[str, RateLimit] = Field(
        default_factory=dict,
        description="per-number overrides of `sender` (toll-free, short codes), keyed by E.164",
    )
    destination: RateLimit = Field(
        default=RateLimit(rate=0.2, burst=5),
        description="per tenant and destination number",
    )
    provider_cps: dict[str, float] = Field(
        default_factory=lambda: {"sandbox": 1000.0, "twilio": 100.0},
        description="per provider account, calls and messages apart (unlisted: unlimited)",
    )


class TenantPolicy(_Section):
    # Calling-hour laws (47 CFR 64.1200(c)(1), the state windows) govern telephone
    # solicitations; one-time codes, receipts and alerts are not solicitations. So by default
    # transactional traffic goes out at any hour, and a tenant may opt in to hours for it.
    exempt_transactional_from_calling_hours: bool = Field(
        default=True,
        description=(
            "transactional messages and calls ignore calling hours (marketing never does); "
            "false opts this tenant's transactional traffic in to calling hours"
        ),
    )
    help_text: str = Field(
        default="Reply STOP to unsubscribe. Msg&data rates may apply.",
        min_length=1,
        max_length=320,
        description="reply to an inbound HELP/INFO",
    )
    optout_text: str = Field(
        default="You are unsubscribed and will receive no further messages. Reply START to resubscribe.",
        min_length=1,
        max_length=320,
        description="the one confirmation sent after an opt-out (no marketing)",
    )
    optin_text: str = Field(
        default="You are resubscribed. Reply STOP to unsubscribe.",
        min_length=1,
        max_length=320,
        description="reply to START/UNSTOP/YES after an opt-out",
    )
    rate_limits: dict[Literal["tenant", "api_key"], RateLimit] = Field(
        default_factory=dict,
        description="this tenant's own `tenant` / `api_key` buckets, replacing the defaults",
    )


class EmailGuardrailSettings(_Section):
    """CAN-SPAM's content requirements for marketing email (guardrails/email_content.py)."""

    unsubscribe_words: list[str] = Field(
        default_factory=lambda: [
            r"unsubscribe",
            r"opt[\s-]?out",
            r"manage\s+(?:your\s+)?(?:email\s+)?preferences",
            r"abbestellen",
            r"d[ée]sinscri",
            r"darse\s+de\s+baja",
        ],
        min_length=1,
        description="regular expressions: a link whose address or text matches one is an "
        "unsubscribe link (besides our own {{ unsubscribe_url }})",
    )
    postal_patterns: list[str] = Field(
        default_factory=lambda: [
            # 123 Main St, Springfield, IL 62701 (one line or several)
            r"\b\d{1,6}\s+[^\n]{2,80}?(?:\n[^\n]{0,80}?)?,\s*(?-i:[A-Z]{2})\.?\s+\d{5}(?:-\d{4})?\b",
            r"\bP\.?\s*O\.?\s*Box\s+\d+",
            # 10 Downing Street, London SW1A 2AA
            r"\b\d{1,6}\s+[^\n]{2,80}?\b(?-i:[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2})\b",
            # 290 Bremner Blvd, Toronto, ON M5V 3L9
            r"\b\d{1,6}\s+[^\n]{2,80}?\b(?-i:[A-Z]\d[A-Z]\s?\d[A-Z]\d)\b",
            # Hauptstraße 5, 10115 Berlin
            r"\b[^\W\d]{3,}\.?\s+\d{1,5}[a-z]?,\s*(?:[A-Z]{1,2}-)?\d{4,5}\s+[^\W\d]{2,}",
        ],
        min_length=1,
        description="regular expressions (case-insensitive), any of which matching the visible "
        "text of a part counts as a postal address",
    )


class GuardrailSettings(_Section):
    rules_file: Path | None = Field(
        default=None,
        description="calling hours, content and keyword rules (default: config/guardrails.toml)",
    )
    checks: list[Literal["suppression", "content", "rate_limits", "calling_hours"]] = Field(
        default_factory=lambda: list(GUARDRAIL_CHECKS),
        min_length=1,
        description=(
            "checks the chain runs (always in the built-in order); leaving one out is refused "
            "at start except under `trunkline dev`"
        ),
    )
    optout_confirmation_window: float = Field(
        default=300.0,
        gt=0,
        description="seconds after an opt-out during which its one confirmation may still be sent",
    )
    policy: TenantPolicy = TenantPolicy()
    tenants: dict[str, TenantPolicy] = Field(
        default_factory=dict,
        description="per-tenant policy by tenant name; keys given here override `policy`",
    )
    rate_limits: RateLimitSettings = RateLimitSettings()
    email: EmailGuardrailSettings = EmailGuardrailSettings()


class AsteriskSettings(_Section):
    """One Asterisk reached over AMI; its calls are routed as provider `asterisk:<name>`."""

    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "trunkline"
    secret: SecretStr = SecretStr("")
    endpoint: str = Field(default="carrier", description="the PJSIP endpoint of the SIP trunk")
    dial: str = Field(
        default="PJSIP/{number}@{endpoint}",
        description="Originate Channel; {number} is E.164 with +, {digits} without, {endpoint}",
    )
    context: str = Field(
        default="trunkline-outbound",
        description="dialplan context an answered call waits in, AGI(agi:async), until bridged "
        "(or told to play a campaign's message)",
    )
    amd_context: str = Field(
        default="trunkline-amd", description="the same, running AMD() first (calls with amd)"
    )
    tts_app: str = Field(
        default="Festival",
        description="dialplan application that speaks text (campaign messages and IVR say)",
    )
    beep_silence: str = Field(
        default="1500,1,20",
        pattern=r"^\d+,\d+,\d+$",
        description="WaitForSilence(ms,times,timeout) before a voicemail drop: AMD() says "
        "MACHINE mid-greeting, the message starts after the beep",
    )
    agent_dial: str = Field(
        default="PJSIP/{user}@{host}",
        description="Channel dialled to reach an AI agent's SIP URI; {user}, {host}, {uri}",
    )
    agent_context: str = Field(
        default="trunkline-agent", description="context the agent leg waits in until bridged"
    )
    caller_id_name: str = Field(default="", description="CallerID name sent with the number")
    ping_interval: float = Field(default=10.0, gt=0, description="seconds between keepalive Pings")
    action_timeout: float = Field(default=5.0, gt=0, description="seconds to wait for a Response")
    connect_timeout: float = Field(default=5.0, gt=0)
    reconnect_backoff_initial: float = Field(default=0.5, gt=0)
    reconnect_backoff_max: float = Field(default=30.0, gt=0)
    tracker_lease: float = Field(
        default=10.0,
        gt=0,
        description="seconds a worker holds the right to track this Asterisk's events without renewing",
    )


class PoolsSettings(_Section):
    """The SIP trunk's channels, partitioned into pools (Redis semaphores with leases)."""

    trunk: str = "default"
    sizes: dict[str, int] = Field(
        default_factory=lambda: {"campaign": 60, "ivr": 15, "api": 8},
        description="channels per pool",
    )
    lease: float = Field(
        default=30.0, gt=0, description="seconds a permit lives without a renew (a dead holder)"
    )
    renew_interval: float = Field(
        default=10.0, gt=0, description="seconds between lease renewals of live calls"
    )
    retry_after_min: float = Field(default=1.0, ge=0, description="lower bound of Retry-After")
    retry_after_max: float = Field(default=30.0, ge=0, description="upper bound of Retry-After")
    reconcile_min_age: float = Field(
        default=10.0,
        ge=0,
        description="permits and calls younger than this are spared by reconcile (not dialled yet)",
    )
    rebuild_timeout: float = Field(
        default=10.0,
        gt=0,
        description="after Redis lost the pools, seconds an admission waits for their holders "
        "to be rebuilt from the calls table (then 503 redis_unavailable)",
    )


class CallsSettings(_Section):
    max_attempts: int = Field(
        default=3, ge=1, description="dispatch tries of a call before it is dead-lettered"
    )
    dispatch_concurrency: int = Field(
        default=64, ge=1, description="originates in flight per worker"
    )
    control_concurrency: int = Field(
        default=32, ge=1, description="hangup/bridge/agent actions in flight per worker"
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="a claimed call job returns after this"
    )
    pool_wait: float = Field(
        default=30.0,
        ge=0,
        description="seconds a dispatch waits (fairly) for a pool permit before trying again later",
    )
    tracker_concurrency: int = Field(
        default=64, ge=1, description="calls whose AMI events are applied at once"
    )
    sandbox_call_duration: float = Field(
        default=1.0, ge=0, description="seconds an answered sandbox call lasts"
    )
    sandbox_ring_seconds: float = Field(
        default=0.2, ge=0, description="seconds the sandbox no-answer number rings"
    )
    twilio_hold_seconds: int = Field(
        default=600, ge=1, description="the Pause a Twilio call holds in until bridged"
    )
    max_duration: int = Field(
        default=14400,
        ge=1,
        description="seconds an answered call may last before the gateway hangs it up "
        "(error_code max_duration); a call's own max_duration can only be lower",
    )
    amd_timeout: float = Field(
        default=35.0,
        gt=0,
        description="seconds after the answer an AMD verdict may take; then the call goes on "
        "as amd_result 'unknown' (above Twilio's 30 s MachineDetectionTimeout and AMD()'s 5 s)",
    )
    setup_timeout: float = Field(
        default=4.0,
        ge=0,
        description="seconds an Asterisk call's channel may go without ringing or progress "
        "from the far end (nothing answered the INVITE) before it is given up as unreachable "
        "and failed over; 0 waits for the whole ring_timeout",
    )
    connect_wait: float = Field(
        default=5.0,
        ge=0,
        description="seconds a dispatch waits for its provider's connection (AMI) when no "
        "other provider is left; then the job is put back without spending a try",
    )
    unavailable_max: float = Field(
        default=300.0,
        gt=0,
        description="seconds a call may wait for its provider's connection in all before it "
        "fails (error_code provider_unavailable)",
    )


class UltravoxSettings(_Section):
    enabled: bool = False
    api_base_url: str = "https://api.ultravox.ai"
    api_key: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0, description="seconds per request")


class AgentsSettings(_Section):
    """AI voice agents a call is bridged to (`on_answer.agent`)."""

    provider: str = Field(
        default="sandbox", description="agent provider for on_answer.agent: sandbox or ultravox"
    )
    sandbox: bool = Field(default=True, description="the local agent provider (no account)")
    bridge_hosts: list[str] = Field(
        default_factory=lambda: ["ultravox", "*.ultravox.ai"],
        description="hosts (fnmatch patterns) on_answer.bridge_to may name: a bridge dials past "
        "the guardrails, so it must only ever reach agents, never the trunk",
    )
    ultravox: UltravoxSettings = UltravoxSettings()


class DidHealthSettings(_Section):
    """DID health (campaigns/didhealth.py): a DID whose answer rate falls too low is rested."""

    window: float = Field(
        default=86400.0, gt=0, description="seconds of did_health_events the rates are read over"
    )
    min_calls: int = Field(
        default=20, ge=1, description="calls in the window before a DID can be rested"
    )
    min_answer_rate: float = Field(
        default=0.15, ge=0, le=1, description="a DID answered below this share is rested"
    )
    cool_off: float = Field(default=14400.0, gt=0, description="seconds a rested DID is not chosen")
    lookup: Literal["none", "sandbox", "twilio"] = Field(
        default="none",
        description="reputation provider the DIDs are looked up with (flagged: rested): "
        "twilio (Lookup v2 with providers.twilio's account), or sandbox, which flags by the "
        "number's last digit (9 spam, 8 scam) — for tests only",
    )
    lookup_max_age: float = Field(
        default=86400.0, gt=0, description="seconds before a DID is looked up again"
    )


class CampaignsSettings(_Section):
    """The campaign dialer (campaigns/dialer.py) and the rules campaign calls follow."""

    interval: float = Field(default=0.5, gt=0, description="seconds between dialer steps at most")
    settle_delay: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="seconds a dialer step waits after a NOTIFY, to take a burst of call "
        "changes in one step",
    )
    orphan_after: float = Field(
        default=20.0,
        ge=0,
        description="seconds a claimed prospect may go without its call before another worker "
        "sends it (under the same key: it cannot dial twice)",
    )
    orphan_every: float = Field(
        default=2.0, gt=0, description="seconds between the dialer's looks for orphans"
    )
    refused_retry: float = Field(
        default=600.0,
        gt=0,
        description="seconds before a prospect whose dial the guardrails deferred or refused "
        "for now (calling hours, rate limits) is tried again",
    )
    batch: int = Field(
        default=500, ge=1, le=10000, description="finished attempts settled per dialer step"
    )
    max_claim: int = Field(
        default=200, ge=1, le=5000, description="prospects one campaign claims per step at most"
    )
    dial_lead: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="when the campaign pool, not max_concurrent, bounds a campaign: dials "
        "accepted ahead, waiting for a channel, as a share of the pool — a channel given back "
        "is taken at once instead of after the dialer's next step (live calls stay within the "
        "pool and max_concurrent)",
    )
    callerid_ttl: float = Field(
        default=30.0,
        gt=0,
        description="seconds local presence keeps a campaign's DIDs before reading them again",
    )
    health_every: float = Field(
        default=5.0, gt=0, description="seconds between DID health reviews (rest / restore)"
    )
    abandon_after: float = Field(
        default=1.5,
        gt=0,
        le=2.0,
        description="seconds after a person answers a campaign call that is not connected to "
        "its target by then: the abandon message is played (within the 2 s of 16 CFR "
        "310.4(b)(4)) and the call hung up",
    )
    did_health: DidHealthSettings = DidHealthSettings()


class WorkflowsSettings(_Section):
    interval: float = Field(
        default=1.0, gt=0, description="seconds between looks for waits whose time is up"
    )
    concurrency: int = Field(default=4, ge=1, description="runs one worker advances at once")
    lease: float = Field(
        default=30.0,
        gt=0,
        description="seconds a worker holds a run's step before another may take it over "
        "(a killed worker's step is taken again after this, under the same idempotency key)",
    )


class StripeBillingSettings(_Section):
    """Usage exported to Stripe Billing as meter events (gateway/billing); on when api_key is set."""

    api_key: SecretStr | None = Field(
        default=None, description="secret key (sk_...); unset = no export"
    )
    api_base: str = Field(default="https://api.stripe.com", description="Stripe's API")
    meter_events_base: str = Field(
        default="https://meter-events.stripe.com",
        description="the high-throughput meter event stream's host",
    )
    meters: dict[str, str] = Field(
        default_factory=lambda: {
            "sms_segment": "trunkline_sms_segments",
            "email": "trunkline_emails",
            "voice_second": "trunkline_voice_seconds",
            "voice_call": "trunkline_calls",
        },
        description="usage unit (as GET /v1/usage names it) -> the Stripe meter's event_name; "
        "units not listed are not exported",
    )
    identifier_prefix: str = Field(
        default="trunkline",
        pattern=r"^[A-Za-z0-9_-]{1,40}$",
        description="starts every meter event identifier: give each deployment that bills "
        "into one Stripe account its own",
    )
    batch_size: int = Field(default=1000, ge=1, le=100_000, description="usage rows per batch")
    window: float = Field(
        default=60.0,
        gt=0,
        description="seconds: a batch's usage of one tenant and unit within one window is one "
        "meter event",
    )
    interval: float = Field(default=60.0, gt=0, description="seconds between export rounds")
    start_at: AwareDatetime | None = Field(
        default=None, description="usage recorded before this instant is never exported"
    )
    timeout: float = Field(default=30.0, gt=0, description="seconds per Stripe request")
    retry_initial: float = Field(
        default=1.0, gt=0, description="first wait after a failed send (doubles, with jitter)"
    )
    retry_max: float = Field(default=300.0, gt=0, description="longest wait between sends")


class BillingSettings(_Section):
    stripe: StripeBillingSettings = StripeBillingSettings()


class IvrSettings(_Section):
    """Inbound IVR (ivr/): sessions in Redis, the Asterisk (AsyncAGI) transport's call leases,
    what it asks Asterisk to play and run."""

    session_ttl: int = Field(
        default=3600,
        ge=60,
        le=86400,
        description="seconds a live session stays in Redis without a step (renewed by each)",
    )
    lease: float = Field(
        default=10.0,
        ge=0.5,
        le=300.0,
        description="seconds a worker's lease on an Asterisk IVR call lasts (renewed every "
        "third of it); a worker killed mid-call is replaced this long after it died",
    )
    command_timeout: float = Field(
        default=10.0,
        gt=0,
        le=120.0,
        description="seconds an AGI command may take beyond its own time before the call is "
        "given up",
    )
    overflow_sound: str = Field(
        default="all-circuits-busy-now",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,127}$",
        description="the sound a caller hears when the ivr pool is full",
    )
    silence: str = Field(
        default="silence/1",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,127}$",
        description="the sound GET DATA plays after a spoken prompt",
    )
    recordings_dir: str = Field(
        default="trunkline-ivr",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_/.\-]{0,127}$",
        description="where RECORD FILE stores voicemail, under Asterisk's sounds",
    )


class DevSettings(_Section):
    data_dir: Path = Path(".trunkline")
    tenant: str = "dev"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRUNKLINE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    http: HttpSettings = HttpSettings()
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    log: LogSettings = LogSettings()
    worker: WorkerSettings = WorkerSettings()
    providers: ProvidersSettings = ProvidersSettings()
    messaging: MessagingSettings = MessagingSettings()
    receipts: ReceiptsSettings = ReceiptsSettings()
    events: EventsSettings = EventsSettings()
    webhooks: WebhookSettings = WebhookSettings()
    email: EmailSettings = EmailSettings()
    guardrails: GuardrailSettings = GuardrailSettings()
    asterisk: dict[str, AsteriskSettings] = Field(
        default_factory=dict,
        description="Asterisk servers by name; none = voice via sandbox/Twilio",
    )
    pools: PoolsSettings = PoolsSettings()
    calls: CallsSettings = CallsSettings()
    agents: AgentsSettings = AgentsSettings()
    campaigns: CampaignsSettings = CampaignsSettings()
    workflows: WorkflowsSettings = WorkflowsSettings()
    billing: BillingSettings = BillingSettings()
    ivr: IvrSettings = IvrSettings()
    dev: DevSettings = DevSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with secrets masked (URLs keep all but their password)."""
        out = self.model_dump(mode="json")
        for section in ("database", "redis"):
            url = getattr(self, section).url
            if url is not None:
                out[section]["url"] = _mask_password(url.get_secret_value())
        return out

    def database_url(self) -> str:
        if self.database.url is None:
            raise ConfigError("database.url", None, "a postgresql:// URL is required")
        return self.database.url.get_secret_value()

    def redis_url(self) -> str:
        if self.redis.url is None:
            raise ConfigError("redis.url", None, "a redis:// or unix:// URL is required")
        return self.redis.url.get_secret_value()


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class ConfigError(Exception):
    """A bad or missing setting; `str()` is the one line shown to the operator."""

    def __init__(self, key: str, value: object, problem: str) -> None:
        env = "TRUNKLINE_" + key.upper().replace(".", "__")
        super().__init__(f"config error: {key} ({env}) = {value!r}: {problem}")
        self.key = key


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings, turning the first validation error into a one-line ConfigError."""
    raw = config_file or os.environ.get("TRUNKLINE_CONFIG")
    path = Path(raw) if raw else None
    if path is not None and not path.is_file():
        raise ConfigError("config", str(path), "no such file")
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            raise ConfigError(key, value, "no such setting") from None
        raise ConfigError(key, value, err["msg"]) from None
    except ValueError as exc:  # malformed TOML
        raise ConfigError("config", str(path), f"not valid TOML ({exc})") from None
    finally:
        _config_file.reset(token)
