"""TwiML, the language of the Twilio transport: engine commands → one `<Response>` document.

Twilio asks for the next document when a verb that waits finishes: `<Gather action=…>` posts
the caller's `Digits`, `<Record action=…>` its `RecordingUrl`. A `<Gather>` that hears nothing
falls through to the next verb, so each Gather is followed by a `<Redirect>` to the same action
with no digits — that request is the engine's NoInput (TwiML's own idiom for "no input").
Transfers and webhooks are settled on our side before the document is rendered (the guardrail
chain, the tenant's POST), so only a cleared transfer ever becomes a `<Dial>`.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from ivr.engine import Bridge, Command, Gather, Hangup, Play, Record, Say, Transfer


def _say(cmd: Say) -> str:
    attrs = ""
    if cmd.voice:
        attrs += f" voice={quoteattr(cmd.voice)}"
    if cmd.language:
        attrs += f" language={quoteattr(cmd.language)}"
    return f"<Say{attrs}>{escape(cmd.text)}</Say>"


def _play(cmd: Play) -> str:
    return f"<Play loop={quoteattr(str(cmd.loop))}>{escape(cmd.url)}</Play>"


def render(commands: list[Command], action: str, dial_action: str | None = None) -> str:
    """One TwiML document for a step's commands; `action` is where Twilio posts the answer,
    `dial_action` where it posts a transfer's <Dial> outcome (DialCallStatus)."""
    verbs: list[str] = []
    for cmd in commands:
        if isinstance(cmd, Say):
            verbs.append(_say(cmd))
        elif isinstance(cmd, Play):
            verbs.append(_play(cmd))
        elif isinstance(cmd, Gather):
            prompt = "".join(_say(p) if isinstance(p, Say) else _play(p) for p in cmd.prompt)
            attrs = f' input="dtmf" timeout={quoteattr(str(round(cmd.timeout)))}'
            if cmd.digits is not None:
                attrs += f" numDigits={quoteattr(str(cmd.digits))}"
            if cmd.finish_on_key:
                attrs += f" finishOnKey={quoteattr(cmd.finish_on_key)}"
            attrs += f' action={quoteattr(action)} method="POST" actionOnEmptyResult="true"'
            verbs.append(f"<Gather{attrs}>{prompt}</Gather>")
            verbs.append(f'<Redirect method="POST">{escape(action)}</Redirect>')
        elif isinstance(cmd, Record):
            verbs += [_say(p) for p in cmd.prompt]
            attrs = (
                f" maxLength={quoteattr(str(cmd.max_length))}"
                f" playBeep={quoteattr(str(cmd.beep).lower())}"
                f" timeout={quoteattr(str(round(cmd.timeout)))}"
            )
            if cmd.finish_on_key:
                attrs += f" finishOnKey={quoteattr(cmd.finish_on_key)}"
            verbs.append(f'<Record{attrs} action={quoteattr(action)} method="POST"/>')
            verbs.append(f'<Redirect method="POST">{escape(action)}</Redirect>')
        elif isinstance(cmd, Transfer):
            caller = f" callerId={quoteattr(cmd.from_)}" if cmd.from_ else ""
            if dial_action:
                caller += f' action={quoteattr(dial_action)} method="POST"'
            verbs.append(
                f"<Dial timeout={quoteattr(str(cmd.timeout))}{caller}>"
                f"<Number>{escape(cmd.to)}</Number></Dial>"
            )
        elif isinstance(cmd, Bridge) and cmd.kind == "sip":
            verbs.append(f"<Dial><Sip>{escape(str(cmd.target.get('uri', '')))}</Sip></Dial>")
        elif isinstance(cmd, Bridge | Hangup):
            verbs.append("<Hangup/>")  # an AI agent is not reachable from Twilio in this build
    body = "".join(verbs)
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>'
