"""SMS segment counting (3GPP TS 23.038 alphabets, TS 23.040 concatenation).

Why this lives in `gateway.core`: billing estimates, the content guardrail's
`max_segments` rule and the SMS adapters must all agree on one count, and the
count a carrier bills is decided here, not by `len(text)`.

Rules implemented:

* A message is GSM-7 when every character is in the GSM 03.38 default alphabet
  or its extension table; otherwise the whole message is UCS-2 (UTF-16).
* GSM-7: extension characters cost 2 septets (ESC + char). UCS-2: characters
  outside the BMP cost 2 UTF-16 code units (a surrogate pair).
* Single segment: 160 septets / 70 units. Multi-part: 153 septets / 67 units
  per segment (the 6-octet concatenation UDH takes the rest).
* A multi-part split never separates an escape sequence from its character
  nor a surrogate pair from its partner, so a segment may end short of the
  limit by one; the count reflects that (it is not plain ceil(units / 153)).
* An empty text is 0 segments (nothing is sent).

Not done here: provider "smart encoding" (replacing curly quotes with ASCII
before sending). If an adapter enables that, count the text it will send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 default alphabet, in code-point order 0x00..0x7F. 0x1B (ESC) is
# the escape to the extension table, not a character, so it is left out.
GSM7_BASIC: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"  # ESC (0x1B) sits between Ξ and Æ
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table characters (sent as ESC + code, i.e. 2 septets).
GSM7_EXTENSION: frozenset[str] = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160
GSM7_MULTI = 153
UCS2_SINGLE = 70
UCS2_MULTI = 67


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """How a text will be sent as SMS.

    `units` is septets for GSM-7 and UTF-16 code units for UCS-2; `chars` is
    the number of Unicode code points. `per_segment` is the limit that applied
    (160/70 for one segment, 153/67 when concatenated); `last_segment_units`
    is what the final segment carries, so `remaining` is what still fits.
    """

    encoding: Encoding
    segments: int
    units: int
    chars: int
    per_segment: int
    last_segment_units: int

    @property
    def remaining(self) -> int:
        """Units that still fit in the last segment without adding one."""
        return self.per_segment - self.last_segment_units if self.segments else 0


_GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM-7 basic or extension table."""
    return set(text) <= _GSM7_ALL


def encoding_for(text: str) -> Encoding:
    """The encoding a carrier will use for `text`."""
    return "GSM-7" if is_gsm7(text) else "UCS-2"


def _units(text: str, encoding: Encoding) -> int:
    # str.count / encode run in C; this is the hot path for single-segment texts.
    if encoding == "GSM-7":
        return len(text) + sum(text.count(ch) for ch in GSM7_EXTENSION)
    return len(text.encode("utf-16-le")) // 2


def _char_cost(ch: str, encoding: Encoding) -> int:
    if encoding == "GSM-7":
        return 2 if ch in GSM7_EXTENSION else 1
    return 2 if ord(ch) > 0xFFFF else 1


def _limits(encoding: Encoding) -> tuple[int, int]:
    return (GSM7_SINGLE, GSM7_MULTI) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_MULTI)


def _split(text: str, encoding: Encoding, units: int) -> list[str]:
    single, multi = _limits(encoding)
    if not text:
        return []
    if units <= single:
        return [text]
    if units == len(text):  # every character costs one unit: plain fixed-size chunks
        return [text[i : i + multi] for i in range(0, len(text), multi)]
    parts: list[str] = []
    start = 0
    used = 0
    for i, ch in enumerate(text):
        cost = _char_cost(ch, encoding)
        if used + cost > multi:
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return parts


def split_segments(text: str) -> list[str]:
    """Split `text` into the parts a carrier would send, in order.

    A character (escape sequence or surrogate pair) is never cut in two: when
    it does not fit in the current segment it starts the next one.
    """
    encoding = encoding_for(text)
    return _split(text, encoding, _units(text, encoding))


def segment_starts(text: str) -> list[int]:
    """Index in `text` (code points) where each segment begins."""
    starts: list[int] = []
    offset = 0
    for part in split_segments(text):
        starts.append(offset)
        offset += len(part)
    return starts


def count_segments(text: str) -> SegmentCount:
    """Encoding, segment count and unit count for `text` sent as one SMS."""
    encoding = encoding_for(text)
    units = _units(text, encoding)
    single, multi = _limits(encoding)
    if units <= single:
        segments = 1 if text else 0
        return SegmentCount(encoding, segments, units, len(text), single, units)
    parts = _split(text, encoding, units)
    last = _units(parts[-1], encoding)
    return SegmentCount(encoding, len(parts), units, len(text), multi, last)
