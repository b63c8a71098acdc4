"""AMI wire framing, as captured in ../shared/asterisk-ami/ (its README is in captures/: "Wire format facts").

A message is ``Key: Value`` lines ended by CR LF, closed by an empty line. The server greets with
one banner line and *no* empty line after it. Header names sent by clients are case-insensitive
(01: ``action: ping`` / ``actionid:``); a header may repeat (``Variable:``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

BANNER = b"Asterisk Call Manager/11.0.0\r\n"

Headers = list[tuple[str, str]]


def encode(headers: Iterable[tuple[str, str]]) -> bytes:
    """One AMI message on the wire: ``Key: Value\\r\\n`` lines and an empty line."""
    return "".join(f"{key}: {value}\r\n" for key, value in headers).encode() + b"\r\n"


def response(kind: str, action_id: str | None, *fields: tuple[str, str]) -> Headers:
    """A Response, with the ActionID echoed as the second line (01), or no ActionID line at all."""
    head: Headers = [("Response", kind)]
    if action_id is not None:
        head.append(("ActionID", action_id))
    return head + list(fields)


@dataclass
class Action:
    """One action as a client sent it: ordered headers, looked up case-insensitively."""

    headers: Headers = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    @property
    def name(self) -> str | None:
        return self.get("Action")

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")


class ActionReader:
    """Incremental parser for the client→server direction.

    Asterisk reads lines ending in LF and drops a trailing CR, so bare-LF clients work too.
    Bytes are kept until a whole line is there, so a split multibyte character is never cut.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._current: Headers = []

    def feed(self, data: bytes) -> Iterator[Action]:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) != -1:
            raw = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if not raw:
                if self._current:
                    yield Action(self._current)
                    self._current = []
                continue
            key, sep, value = raw.decode("utf-8", "replace").partition(":")
            if sep:
                self._current.append((key.strip(), value.strip()))
