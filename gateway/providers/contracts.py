"""Provider contracts, shaped around the messiest provider (callback-only status,
duplicate and reordered receipts, undocumented limits).

Adapters implement `_send`; callers can only reach it through `send`, which
verifies the `ClearedAction` first — the guardrail chain is not optional.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gateway.core.actions import OutboundAction
from guardrails.cleared import ClearedAction

MessageStatus = Literal[
    "queued", "sent", "delivered", "undelivered", "failed", "received", "bounced", "complained"
]


class ProviderError(Exception):
    """A provider refused or failed a request. `transient` says whether retrying can help."""

    transient = False

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        ambiguous: bool = True,
        outcome: Literal["failed", "bounced"] = "failed",
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        # ambiguous: the provider may have acted (timeout after sending) — retry with the same key.
        self.ambiguous = ambiguous
        # The status a permanent error ends the message in: an email address the receiving
        # server says does not exist (SMTP 550 5.1.1 at RCPT) is a hard bounce, not a failure.
        self.outcome = outcome


class TransientProviderError(ProviderError):
    transient = True


class PermanentProviderError(ProviderError):
    transient = False


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    status: MessageStatus


@dataclass(frozen=True)
class StatusReport:
    """One normalized receipt from a provider (webhook, callback or poll)."""

    provider: str
    provider_message_id: str
    status: MessageStatus
    error_code: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None
    source: str | None = None  # how it reached us when not a receipt (e.g. "twilio:fetch")


class MessagingProvider(ABC):
    """SMS/WhatsApp/email: `send`. Status arrives later as StatusReports.

    `fetch_status` is optional: a provider that can be asked about a message (Twilio's
    Message resource) sets `fetches_status` and overrides it, so a receipt we failed to
    store is recovered by asking (DESIGN principle 11). Callback-only providers cannot.
    """

    name: str
    channels: frozenset[str]
    fetches_status: bool = False

    async def send(self, cleared: ClearedAction, attempt_key: str) -> SendResult:
        action = ClearedAction.verify(cleared)  # unbound: a look-alike's own verify() never runs
        if action.channel not in self.channels:
            raise PermanentProviderError(
                f"{self.name} does not carry {action.channel}", code="unsupported_channel"
            )
        return await self._send(action, attempt_key)

    @abstractmethod
    async def _send(self, action: OutboundAction, attempt_key: str) -> SendResult: ...

    async def fetch_status(self, provider_message_id: str) -> StatusReport | None:
        """The message's status as the provider knows it now; None when it cannot say.
        Raises `ProviderError` when asking failed (try again later)."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional lifecycle hook
        """Open clients that need a running event loop."""

    async def close(self) -> None:  # noqa: B027 - optional lifecycle hook
        """Close what start() opened and cancel owned tasks."""


# --- voice ------------------------------------------------------------------------------------
#
# Shaped around the messiest voice provider: the outcome of an originate is never the answer
# to the request (Asterisk answers "queued", Twilio "queued"), it arrives later as events or
# signed callbacks — late, twice, out of order, and for a call we may not have committed the
# provider id of yet. So `originate` only says "the provider took it", and every adapter
# normalizes what follows into `CallReport`s keyed by the attempt key *we* chose (Asterisk
# ChannelId, the token in Twilio's callback URL), which the call record knows before the
# provider is even asked.

CallLeg = Literal["customer", "agent"]
CallReportStatus = Literal[
    "dialing", "ringing", "answered", "completed", "busy", "no_answer", "failed", "canceled"
]
CallFact = Literal["bridged", "unbridged", "amd", "channel"]
AmdResult = Literal["human", "machine", "notsure"]


@dataclass(frozen=True)
class CallSpec:
    """What an originate needs beyond the cleared action (which holds to/from/purpose)."""

    call_id: str
    trace_id: str
    ring_timeout: int = 30
    amd: bool = False
    # With amd: a machine's verdict only after its greeting (the beep), for a message left on
    # it (on_machine continue: a campaign's voicemail drop). Twilio: DetectMessageEnd.
    amd_after_greeting: bool = False
    retry: bool = False  # the same attempt key again: the provider may have the call already
    max_duration: int | None = None  # seconds once answered; providers that can enforce it do


@dataclass(frozen=True)
class CallRef:
    """A call (one leg) as a provider knows it: our key, its id, its channel name."""

    provider: str
    attempt_key: str
    provider_call_id: str | None = None
    channel: str | None = None
    leg: CallLeg = "customer"


@dataclass(frozen=True)
class SipTarget:
    """Bridge a call to a SIP URI (an AI agent session, a SIP endpoint)."""

    uri: str
    leg_key: str  # the key the new leg's reports carry (Asterisk: its ChannelId)


@dataclass(frozen=True)
class OriginateResult:
    provider_call_id: str
    already: bool = False  # a retried attempt found the call already placed under its key


@dataclass(frozen=True)
class BridgeResult:
    joined: bool  # True: the parties are connected now; False: a leg is dialing (reports follow)
    leg: CallRef | None = None


@dataclass(frozen=True)
class CallReport:
    """One normalized fact about a call leg, from AMI events, a webhook or the sandbox.

    `status` moves the call's state machine; `fact` records what is not a status (bridged,
    AMD verdict, the channel name). `failover` marks an unanswered end caused by our side or
    the carrier (congestion, 408, transport) that another provider may retry; a final answer
    from the called party (busy, declined, not found, no answer) never sets it.
    """

    provider: str
    attempt_key: str
    status: CallReportStatus | None = None
    leg: CallLeg = "customer"
    fact: CallFact | None = None
    provider_call_id: str | None = None
    channel: str | None = None
    hangup_cause: int | None = None
    hangup_cause_text: str | None = None
    sip_code: int | None = None
    sip_code_source: Literal["sip", "mapped"] | None = None  # a SIP response, or a cause mapped
    error_code: str | None = None
    failover: bool = False
    amd: AmdResult | None = None
    amd_detail: str | None = None
    bridge_id: str | None = None
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


class VoiceProvider(ABC):
    """Voice: `originate`, `hangup`, `bridge`; status arrives as CallReports (events/webhooks).

    `originate` only accepts a `ClearedAction`. `hangup` and `bridge` act on a call that was
    cleared when it was placed and reach no new consumer (a bridge joins two of the tenant's
    own calls, or the call and the tenant's AI agent), and hanging up is never refused.

    `fetch_status` is optional, as for messaging: a provider whose calls can be looked up
    (Twilio's Call resource) sets `fetches_status`; one whose status comes from an event
    stream that is reconciled as a whole (Asterisk's CoreShowChannels) does not need it.
    """

    name: str
    fetches_status: bool = False

    async def originate(
        self, cleared: ClearedAction, attempt_key: str, spec: CallSpec
    ) -> OriginateResult:
        action = ClearedAction.verify(cleared)  # unbound: a look-alike's own verify() never runs
        if action.channel != "voice":
            raise PermanentProviderError(
                f"{self.name} cannot originate {action.channel}", code="unsupported_channel"
            )
        return await self._originate(action, attempt_key, spec)

    async def hangup(self, call: CallRef) -> None:
        await self._hangup(call)

    async def bridge(self, call: CallRef, target: CallRef | SipTarget) -> BridgeResult:
        return await self._bridge(call, target)

    async def say_then_hangup(
        self, call: CallRef, text: str, *, after_greeting: bool = False
    ) -> None:
        """Speak `text` to the called party, then end the call (a campaign's abandon message or
        voicemail drop): the provider hangs up when the message is over, so the caller must
        not hang up meanwhile. `after_greeting` (a voicemail drop): the message must start
        after the machine's beep — a provider whose AMD verdict comes mid-greeting waits for
        it. A provider that cannot play on a live call raises say_unsupported (the caller
        then hangs up itself)."""
        raise PermanentProviderError(f"{self.name} cannot play on a call", code="say_unsupported")

    async def fetch_status(self, call: CallRef) -> CallReport | None:
        """The call's status as the provider knows it now, as a report on `call.attempt_key`;
        None when it cannot say. Raises `ProviderError` when asking failed."""
        return None

    @abstractmethod
    async def _originate(
        self, action: OutboundAction, attempt_key: str, spec: CallSpec
    ) -> OriginateResult: ...

    @abstractmethod
    async def _hangup(self, call: CallRef) -> None: ...

    @abstractmethod
    async def _bridge(self, call: CallRef, target: CallRef | SipTarget) -> BridgeResult: ...

    async def start(self) -> None:  # noqa: B027 - optional lifecycle hook
        """Open connections that need a running event loop."""

    async def close(self) -> None:  # noqa: B027 - optional lifecycle hook
        """Close what start() opened and cancel owned tasks."""


# --- reputation (DID health) ----------------------------------------------------------------


@dataclass(frozen=True)
class Reputation:
    """What a reputation provider says of one of our numbers. A lookup reaches no one (it
    calls and texts nobody), so it takes no ClearedAction."""

    number: str
    provider: str
    flags: tuple[str, ...] = ()  # e.g. spam_likely, scam_likely; () = clean
    score: float | None = None  # 0 clean … 1 certainly flagged, when the provider scores
    line_type: str | None = None  # mobile, landline, voip, toll_free …
    raw: dict[str, Any] = field(default_factory=dict)


class ReputationProvider(ABC):
    """`lookup` of one number. Providers rate-limit lookups without saying how much: callers
    look each DID up at most once per `reputation_max_age` and treat a TransientProviderError
    as "not known yet", never as clean."""

    name: str

    @abstractmethod
    async def lookup(self, number: str) -> Reputation: ...

    async def close(self) -> None:  # noqa: B027 - optional lifecycle hook
        """Close what the adapter opened."""
