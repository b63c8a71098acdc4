"""Asterisk as a voice provider: Originate / Hangup / Bridge over one AMI connection.

The outcome of an Originate is never its Response ("Originate successfully queued"); it comes
as events, which ``sip.calls.CallTracker`` turns into ``CallReport``s. So ``originate`` returns
once Asterisk queued the call, under the ChannelId we chose (the attempt key), and raises what
the dispatcher needs to decide on failover:

=========================================  ==============================================
AMI outcome                                raised
=========================================  ==============================================
not logged in / cannot connect             Transient, not ambiguous: nothing was sent
``Response: Error`` (Originate refused)    Transient, not ambiguous: Asterisk did nothing
no Response in time / session died after   Transient, *ambiguous*: Asterisk may be dialing;
the Originate was written                  retry here under the same key, never elsewhere
=========================================  ==============================================

A retried attempt (same key) first looks for its channel in ``CoreShowChannels``: if the
first try did reach Asterisk, the call is already there and is not dialled twice.

Bridging to an AI agent's SIP URI dials a second leg (ChannelId = key + ``-agent``) into a
waiting context; when the tracker reports it answered, the gateway bridges the two channels
with the ``Bridge`` action (04: ``Channels have been bridged``).

Channels are addressed by the Uniqueid we chose, never by a cached name: Asterisk numbers its
channel names from 0 again after a restart (``PJSIP/carrier-00000000`` is someone else's call
then). ``Hangup`` takes the Uniqueid itself (Asterisk looks a name up, then a Uniqueid, both
exact). ``Bridge`` matches *prefixes* (features.c ``ast_channel_get_by_name_prefix``), so key
``X`` would also find ``X-agent``: it is sent names read from ``CoreShowChannels`` by exact
Uniqueid on the same AMI session — names are unique within one Asterisk run, and a session
never outlives its run. ``No such channel`` for a channel we saw means the call ended
unobserved: ``CallGone``, and the gateway closes it.

Playing on a live call (a campaign's abandon message, its voicemail drop) is AsyncAGI on this
same AMI connection: an answered call waits in ``AGI(agi:async)`` (the ``context``, after
``AMD()`` in ``amd_context``), so ``say_then_hangup`` queues AGI commands on it — the text
spoken by ``tts_app`` (ivr/agi.py renders it as the IVR does), then ``HANGUP`` — which
Asterisk runs in order; it returns once they are queued. A voicemail drop first runs
``WaitForSilence(beep_silence)``: AMD() says MACHINE in the middle of the greeting, and the
message must start after the beep. A channel addressed by its Uniqueid that is not in AGI yet
(``Failed to add AGI command``: AMD() is finishing) is asked again for ``agi_wait`` s; a
dialplan without AGI(agi:async) there is ``say_unsupported``, and the caller hangs up.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from gateway.core.actions import OutboundAction
from gateway.providers.contracts import (
    BridgeResult,
    CallRef,
    CallSpec,
    OriginateResult,
    PermanentProviderError,
    SipTarget,
    TransientProviderError,
    VoiceProvider,
)
from ivr.agi import AgiConfig, quote, render
from ivr.engine import Say
from sip.ami import (
    AMIActionError,
    AMIClient,
    AMIConnectError,
    AMIConnectionLost,
    AMIError,
    AMINotConnected,
    AMITimeout,
)

# What may reach a dial string: no '&' (a second channel), ',' (options), '/' or spaces.
_SIP_URI = re.compile(
    r"^sips?:(?:(?P<user>[A-Za-z0-9_.!~*'()%+=$\-]+)@)?(?P<host>[A-Za-z0-9.\-]+)(?::\d+)?(?:[;?].*)?$"
)


@dataclass(frozen=True)
class AsteriskConfig:
    """How calls are placed on one Asterisk (see config/trunkline.example.toml [asterisk.*])."""

    name: str
    endpoint: str = "carrier"
    dial: str = "PJSIP/{number}@{endpoint}"
    context: str = "trunkline-outbound"
    amd_context: str = "trunkline-amd"
    agent_dial: str = "PJSIP/{user}@{host}"
    agent_context: str = "trunkline-agent"
    caller_id_name: str = ""
    tts_app: str = "Festival"  # the dialplan application that speaks text (as the IVR's)
    beep_silence: str = "1500,1,20"  # WaitForSilence(ms, times, timeout s): after the beep
    agi_wait: float = 1.0  # seconds a call not yet in AGI(agi:async) is waited for


class AsteriskVoice(VoiceProvider):
    def __init__(self, config: AsteriskConfig, client: AMIClient) -> None:
        self.config = config
        self.client = client
        self.name = provider_name(config.name)

    # -- originate ------------------------------------------------------------------------

    def dial_string(self, number: str) -> str:
        return self.config.dial.format(
            number=number, digits=number.lstrip("+"), endpoint=self.config.endpoint
        )

    async def _originate(
        self, action: OutboundAction, attempt_key: str, spec: CallSpec
    ) -> OriginateResult:
        if spec.retry and await self._find(attempt_key) is not None:
            return OriginateResult(attempt_key, already=True)
        caller_id = None
        if action.from_:
            caller_id = f'"{self.config.caller_id_name}" <{action.from_}>'
        try:
            await self.client.originate(
                self.dial_string(action.to),
                context=self.config.amd_context if spec.amd else self.config.context,
                exten="s",
                channel_id=attempt_key,
                caller_id=caller_id,
                ring_timeout=spec.ring_timeout,
                variables={"TL_CALL_ID": spec.call_id, "TL_TRACE_ID": spec.trace_id},
            )
        except Exception as exc:
            raise _provider_error("originate", exc) from exc
        return OriginateResult(attempt_key)

    async def wait_ready(self, timeout: float) -> bool:
        """Logged in to this Asterisk, or logged in again within ``timeout`` s (a restart takes
        seconds): nothing can be dialled before, and that is our outage, not a failed try."""
        if self.client.is_connected:
            return True
        if timeout <= 0:
            return False
        try:
            await self.client.wait_connected(timeout)
        except TimeoutError:
            return False
        return self.client.is_connected

    # -- hangup / bridge --------------------------------------------------------------------

    async def _hangup(self, call: CallRef) -> None:
        uniqueid = channel_id(call)
        try:
            await self.client.hangup(uniqueid)
        except AMIActionError as exc:
            if "no such channel" not in str(exc).lower():
                raise _provider_error("hangup", exc) from exc
            if call.channel is None:
                # Never seen: not created yet (Originate queued, no channel) or never will
                # be; try again shortly, the control job stops once the call has ended.
                raise TransientProviderError(
                    f"no channel for {uniqueid} yet", code="no_channel", ambiguous=False
                ) from exc
            raise CallGone(call) from exc
        except Exception as exc:
            raise _provider_error("hangup", exc) from exc

    async def _bridge(self, call: CallRef, target: CallRef | SipTarget) -> BridgeResult:
        if isinstance(target, SipTarget):
            return await self._dial_agent(call, target)
        session = self.client.session
        if session is None:
            raise _provider_error("bridge", AMINotConnected("not logged in to Asterisk"))
        try:
            listed = await self.client.core_show_channels(session=session)
        except AMIError as exc:
            raise _provider_error("channel lookup", exc) from exc
        names = {str(item.get("Uniqueid")): str(item.get("Channel")) for item in listed}
        first, second = names.get(channel_id(call)), names.get(channel_id(target))
        for ref, name in ((call, first), (target, second)):
            if name is None and ref.channel is not None:
                raise CallGone(ref)
        if first is None or second is None:
            raise PermanentProviderError(
                "a call to bridge is not up on this Asterisk", code="not_bridgeable"
            )
        try:
            await self.client.send(
                {"Action": "Bridge", "Channel1": first, "Channel2": second, "Tone": "no"},
                session=session,  # the names are this Asterisk run's
            )
        except AMIActionError as exc:
            raise PermanentProviderError(
                f"Asterisk refused the bridge: {exc}", code="bridge_refused", ambiguous=False
            ) from exc
        except Exception as exc:
            raise _provider_error("bridge", exc) from exc
        return BridgeResult(joined=True)

    # -- say (AsyncAGI) ------------------------------------------------------------------------

    async def say_then_hangup(
        self, call: CallRef, text: str, *, after_greeting: bool = False
    ) -> None:
        cfg = AgiConfig(tts_app=self.config.tts_app)
        lines = render(Say(text), cfg, session_id=call.attempt_key)
        if after_greeting:
            lines = [f"EXEC WaitForSilence {quote(self.config.beep_silence)}", *lines]
        uniqueid = channel_id(call)
        for n, line in enumerate([*lines, "HANGUP"]):
            await self._agi(call, line, f"{uniqueid}-say-{n}")

    async def _agi(self, call: CallRef, line: str, command_id: str) -> None:
        """Queue one AGI command on the call's channel (by Uniqueid)."""
        uniqueid = channel_id(call)
        action = {"Action": "AGI", "Channel": uniqueid, "Command": line, "CommandID": command_id}
        deadline = time.monotonic() + self.config.agi_wait
        while True:
            try:
                response = await self.client.send(action, check=False)
            except Exception as exc:
                raise _provider_error("agi", exc) from exc
            if response.success:
                return
            message = str(response.get("Message", ""))
            if "does not exist" in message.lower():
                if call.channel is None:
                    raise TransientProviderError(
                        f"no channel for {uniqueid} yet", code="no_channel", ambiguous=False
                    )
                raise CallGone(call)
            if time.monotonic() >= deadline:  # never entered AGI(agi:async): cannot play
                raise PermanentProviderError(
                    f"{uniqueid} is not in AGI(agi:async) ({message}): cannot play on it",
                    code="say_unsupported",
                )
            await asyncio.sleep(0.05)

    async def _dial_agent(self, call: CallRef, target: SipTarget) -> BridgeResult:
        match = _SIP_URI.match(target.uri)
        if match is None:
            raise PermanentProviderError(f"not a SIP URI: {target.uri!r}", code="invalid_sip_uri")
        channel = self.config.agent_dial.format(
            user=match["user"] or "", host=match["host"], uri=target.uri
        )
        try:
            await self.client.originate(
                channel,
                context=self.config.agent_context,
                exten="s",
                channel_id=target.leg_key,
                ring_timeout=30,
                variables={"TL_BRIDGE_TO": call.provider_call_id or call.attempt_key},
            )
        except Exception as exc:
            raise _provider_error("dial agent", exc) from exc
        leg = CallRef(self.name, call.attempt_key, target.leg_key, None, "agent")
        return BridgeResult(joined=False, leg=leg)

    async def _find(self, uniqueid: str | None) -> str | None:
        """The channel name of a live channel by Uniqueid (our ChannelId), if Asterisk has it."""
        if not uniqueid:
            return None
        try:
            channels = await self.client.core_show_channels()
        except AMIError as exc:
            raise _provider_error("channel lookup", exc) from exc
        for item in channels:
            if item.get("Uniqueid") == uniqueid:
                return str(item.get("Channel"))
        return None


class CallGone(PermanentProviderError):
    """Asterisk has no channel for a call leg we saw up: it ended and we missed its end (an
    AMI gap, a restart). Not a refusal: the gateway closes the call (``code`` call_gone)."""

    def __init__(self, call: CallRef) -> None:
        super().__init__(
            f"Asterisk has no channel {channel_id(call)} any more: the call ended unobserved",
            code="call_gone",
            ambiguous=False,
        )
        self.call = call


def channel_id(call: CallRef) -> str:
    """The Uniqueid we chose for a leg (its Originate ChannelId): the attempt key for the
    called party, the agent leg's own key for the agent."""
    if call.leg == "agent" and call.provider_call_id:
        return call.provider_call_id
    return call.attempt_key


def provider_name(asterisk_name: str) -> str:
    return f"asterisk:{asterisk_name}"


def _provider_error(what: str, exc: BaseException) -> Exception:
    if isinstance(exc, AMINotConnected | AMIConnectError):
        return TransientProviderError(f"{what}: {exc}", code="ami_not_connected", ambiguous=False)
    if isinstance(exc, AMITimeout):
        return TransientProviderError(f"{what}: {exc}", code="timeout", ambiguous=True)
    if isinstance(exc, AMIConnectionLost):
        return TransientProviderError(f"{what}: {exc}", code="ami_connection_lost", ambiguous=True)
    if isinstance(exc, AMIActionError):
        return TransientProviderError(f"{what}: {exc}", code="ami_refused", ambiguous=False)
    if isinstance(exc, AMIError):
        return TransientProviderError(f"{what}: {exc}", code="ami_error", ambiguous=True)
    return exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
