"""AsyncAGI, the language of the Asterisk transport: engine commands → AGI command lines, and
the AMI events of an AsyncAGI channel → engine inputs. Pure (no I/O), so it is tested against
the real transcripts (../shared/asterisk-ami/05a, 05b, 05e, 05g; copies in
tests/amisim/captures/).

On the wire (Asterisk 22):
  * the dialplan runs ``AGI(agi:async)``; Asterisk sends ``Event: AsyncAGIStart`` with ``Env``,
    the URL-encoded ``agi_*: value`` lines of the channel (caller id, DNID, uniqueid…);
  * the client sends ``Action: AGI`` with ``Channel``, ``Command`` and its own ``CommandID``;
    the Response only says the command was queued;
  * the result comes as ``Event: AsyncAGIExec`` with the same ``CommandId`` and a URL-encoded
    ``Result``: ``200 result=12\\n`` (GET DATA, digits 1 2), ``200 result= (timeout)\\n`` (no
    digit), ``200 result=-1\\n`` (the caller hung up during the command, 05b), ``200
    result=-1 endpos=0\\n`` (STREAM FILE of a missing sound, 05e), ``510 Invalid or unknown
    command\\n``;
  * ``Event: AsyncAGIEnd`` when the channel leaves AGI (hung up, or ``ASYNCAGI BREAK``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from ivr.engine import (
    Bridge,
    CallerHangup,
    Command,
    Digits,
    Gather,
    Hangup,
    Input,
    NoInput,
    Play,
    Record,
    Recorded,
    Say,
    Transfer,
)

_RESULT = re.compile(r"^(\d{3})(?: result=(\S*))?(?: \(([^)]*)\))?(.*)$")
# What may reach a dial string (as sip/asterisk.py): no '&' (a second channel), ',' (options),
# '/' or spaces in the user or host.
_SIP_URI = re.compile(
    r"^sips?:(?:(?P<user>[A-Za-z0-9_.!~*'()%+=$\-]+)@)?(?P<host>[A-Za-z0-9.\-]+)(?::\d+)?(?:[;?].*)?$"
)


@dataclass(frozen=True)
class AgiResult:
    code: int  # 200 ok, 510 unknown command, 511 dead channel, 520 usage
    result: str | None  # the `result=` value ("" for `result= (timeout)`)
    data: str | None = None  # the parenthesised part: "timeout", a variable's value…
    extras: dict[str, str] = field(default_factory=dict)  # endpos=3520 …

    @property
    def ok(self) -> bool:
        return self.code == 200 and self.result != "-1"


def parse_env(encoded: str) -> dict[str, str]:
    """AsyncAGIStart's Env: URL-encoded ``agi_key: value`` lines → {key: value}."""
    env: dict[str, str] = {}
    for line in unquote(encoded).split("\n"):
        key, sep, value = line.partition(": ")
        if sep and key.startswith("agi_"):
            env[key] = value
    return env


def parse_result(encoded: str) -> AgiResult:
    """AsyncAGIExec's Result (URL-encoded) → its code, result, data and key=value extras."""
    text = unquote(encoded).strip()
    m = _RESULT.match(text)
    if m is None:
        return AgiResult(0, None, text)
    extras = dict(part.split("=", 1) for part in (m.group(4) or "").split() if "=" in part)
    return AgiResult(int(m.group(1)), m.group(2), m.group(3), extras)


def quote(arg: str) -> str:
    """One AGI argument, double-quoted (Asterisk's parser honours \\" and \\\\ inside)."""
    cleaned = arg.replace("\r", " ").replace("\n", " ")
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class AgiConfig:
    tts_app: str = "Festival"  # the dialplan application that speaks text (a TTS module)
    silence: str = "silence/1"  # the sound GET DATA plays when the prompt was spoken before it
    recordings_dir: str = "trunkline-ivr"  # RECORD FILE's path, under Asterisk's sounds
    # The Asterisk's own dial strings ([asterisk.*] dial, endpoint, agent_dial)
    number_dial: str = "PJSIP/{number}@{endpoint}"
    endpoint: str = "carrier"
    agent_dial: str = "PJSIP/{user}@{host}"


def render(cmd: Command, cfg: AgiConfig, *, session_id: str, n: int = 0) -> list[str]:
    """The AGI command lines for one engine command (Transfer and Bridge are dialled by the
    transport with a cleared action; here they only become the Dial application's line)."""
    if isinstance(cmd, Say):
        return [f"EXEC {cfg.tts_app} {quote(cmd.text)}"]
    if isinstance(cmd, Play):
        return [f"EXEC Playback {quote(cmd.url)}"] * cmd.loop
    if isinstance(cmd, Gather):
        lines = [line for p in cmd.prompt for line in render(p, cfg, session_id=session_id)]
        digits = cmd.digits or 32
        return [*lines, f"GET DATA {cfg.silence} {int(cmd.timeout * 1000)} {digits}"]
    if isinstance(cmd, Record):
        lines = [line for p in cmd.prompt for line in render(p, cfg, session_id=session_id)]
        keys = quote(cmd.finish_on_key or "#")
        beep = " beep" if cmd.beep else ""
        path = f"{cfg.recordings_dir}/{session_id}-{n}"
        return [
            *lines,
            f"RECORD FILE {path} wav {keys} {cmd.max_length * 1000}{beep} s={int(cmd.timeout)}",
        ]
    if isinstance(cmd, Hangup):
        return ["HANGUP"]
    if isinstance(cmd, Transfer):
        channel = cfg.number_dial.format(
            number=cmd.to, digits=cmd.to.lstrip("+"), endpoint=cfg.endpoint
        )
        return [f"EXEC Dial {quote(f'{channel},{cmd.timeout}')}"]
    if isinstance(cmd, Bridge) and cmd.kind == "sip":
        m = _SIP_URI.match(str(cmd.target.get("uri", "")))
        if m is None:
            return []
        channel = cfg.agent_dial.format(user=m["user"] or "", host=m["host"], uri=m.group(0))
        return [f"EXEC Dial {quote(channel)}"]
    return []


def gather_input(res: AgiResult) -> Input:
    """GET DATA's answer → the engine's input: digits, silence, or the caller gone (05b)."""
    if res.code != 200 or res.result == "-1":
        return CallerHangup("caller_hangup")
    if res.result:
        return Digits(res.result)
    return NoInput()


def record_input(res: AgiResult, path: str) -> Input:
    """RECORD FILE's answer: result=-1 is a hang-up (what was recorded is kept by Asterisk)."""
    if res.code != 200 or res.result == "-1":
        return CallerHangup("caller_hangup")
    length = float(res.extras.get("endpos", "0")) / 8000  # samples at 8 kHz
    return Recorded(path, length) if length > 0 else NoInput()
