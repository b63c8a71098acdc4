"""AMI framing for the client side: bytes in, panoramisk ``Message`` objects out.

panoramisk's ``AMIProtocol.data_received`` decodes every TCP read on its own with
``errors="ignore"``, so a UTF-8 character split across two reads is silently dropped (a caller
name like "José" arrives as "Jos"). Here the frame is cut on bytes (``\\r\\n\\r\\n``) and only a
whole frame is decoded, so where TCP splits the stream never matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from panoramisk.message import Message

from .errors import AMIProtocolError

BANNER_PREFIX = b"Asterisk Call Manager/"
MAX_FRAME = 1 << 20  # a single AMI message is a few KiB; more means the peer is not AMI

ActionValue = str | int | bool | Sequence[str]


class AMIParser:
    """Incremental parser for the server→client direction."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.banner: str | None = None  # "Asterisk Call Manager/11.0.0" once seen

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        if self.banner is None:
            # One CR LF line with no empty line after it; it may share a read with the Login
            # response (08), because a client may send Login before the banner arrives.
            end = self._buffer.find(b"\r\n")
            if end == -1:
                self._check_size()
                return []
            if self._buffer.startswith(BANNER_PREFIX):
                self.banner = self._buffer[:end].decode("utf-8", "replace")
                del self._buffer[: end + 2]
            else:
                self.banner = ""
        messages: list[Message] = []
        while (end := self._buffer.find(b"\r\n\r\n")) != -1:
            frame = self._buffer[:end].decode("utf-8", "replace")
            del self._buffer[: end + 4]
            message = Message.from_line(frame.strip("\r\n"))
            if message is not None:
                messages.append(message)
        self._check_size()
        return messages

    def _check_size(self) -> None:
        if len(self._buffer) > MAX_FRAME:
            raise AMIProtocolError(f"no AMI message boundary in {len(self._buffer)} bytes")

    @property
    def version(self) -> str | None:
        """The AMI version from the banner ("11.0.0"), if one was seen."""
        if not self.banner:
            return None
        return self.banner.partition("/")[2].strip() or None


def encode_action(action: Mapping[str, ActionValue], action_id: str) -> bytes:
    """``Action`` first, our ``ActionID`` second, then the other headers; a list value repeats
    its header (``Variable``). CR or LF inside a value would start a new header or end the
    message, so they are refused rather than escaped: AMI has no escaping."""
    name = next((str(v) for k, v in action.items() if k.lower() == "action"), None)
    if not name:
        raise ValueError("an AMI action needs an 'Action' header")
    lines = [f"Action: {name}", f"ActionID: {action_id}"]
    for key, value in action.items():
        if key.lower() in ("action", "actionid"):
            continue
        values = list(value) if isinstance(value, list | tuple) else [value]
        for item in values:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            if any(c in f"{key}{text}" for c in "\r\n") or ":" in key:
                raise ValueError(f"AMI header {key!r} has a CR, LF or colon in its name or value")
            lines.append(f"{key}: {text}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
