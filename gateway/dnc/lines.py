"""Reading a DNC file: which lines hold numbers, their E.164 form, and which lines are rejected.

The rules are those of the SQL function `dnc_normalize` (migration 0006), which the importer
used to apply to every line inside PostgreSQL; `tests/guardrails/test_dnc_lines.py` checks the
two agree line for line. Doing it here, while the file streams by, means the database receives
only finished E.164 numbers — nothing to normalise, no line numbers to store, no second pass to
find rejected lines — and a file with a bad line is known to be refused before any SQL runs.

Speed comes from the shape of real registry files: every line is "+1NXXNXXXXXX" or
"NXXNXXXXXX". A block of such lines is recognised and converted with a handful of bytes
operations over the whole block (C speed, ~1 ms per MB), never a Python loop per line; a block
holding anything else (a CSV header, punctuation, international numbers, a bad line) is read
line by line with the full rules.

Which lines are not meant to hold a number (skipped, not rejected): blank lines, lines whose
first non-blank character is `#`, and a first line with no digit (a CSV header).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

MAX_REPORTED = 20  # rejected lines kept for the report (all are counted)

_DIGITS = b"0123456789"
_NXX_LEAD = b"23456789"  # first digit of an area code or an exchange
_SPACE = " \t\n\r\f\v"  # what PostgreSQL's `\s` matches in ASCII

# dnc_normalize_messy, clause by clause: the FTC's "202,5550143" pairs (optionally quoted,
# optionally followed by more fields) join their two fields; any other line keeps its first
# CSV field minus blanks, quotes, parentheses, dots and hyphens.
_PAIR = re.compile(
    rf'[{_SPACE}]*"?[0-9]{{3}}"?[{_SPACE}]*,[{_SPACE}]*"?[0-9]{{7}}"?[{_SPACE}]*(?:,.*)?',
    re.DOTALL,
)
_PUNCT = re.compile(rf'[{_SPACE}"().\-]')
_NOT_DIGIT = re.compile(r"[^0-9]")
_NANP_E164 = re.compile(r"\+1[2-9][0-9]{2}[2-9][0-9]{6}")
_OTHER_E164 = re.compile(r"\+[2-9][0-9]{7,14}")
_NANP_NATIONAL = re.compile(r"1?[2-9][0-9]{2}[2-9][0-9]{6}")
_ANY_DIGIT = re.compile(r"[0-9]")


def normalize(raw: str) -> str | None:
    """One line's number in E.164 (NANP by default), or None when the line is not a number."""
    fields = raw.split(",")
    if _PAIR.fullmatch(raw):
        digits = _NOT_DIGIT.sub("", fields[0] + fields[1])
    else:
        digits = _PUNCT.sub("", fields[0])
    if _NANP_E164.fullmatch(digits):
        return digits
    if digits.startswith("+1"):  # a +1 number that is not a valid NANP number
        return None
    if _OTHER_E164.fullmatch(digits):
        return digits
    if _NANP_NATIONAL.fullmatch(digits):
        return "+1" + digits[-10:]
    return None


def is_content(raw: str, line_no: int) -> bool:
    """Is this line meant to hold a number (and so either imported or rejected)?"""
    stripped = raw.strip(" ")
    if not stripped or stripped[0] == "#":
        return False
    return not (line_no == 1 and not _ANY_DIGIT.search(raw))


def _all_nanp_e164(block: bytes) -> int:
    """How many lines `block` holds if every one is exactly "+1NXXNXXXXXX\\n", else 0."""
    n, rest = divmod(len(block), 13)
    if rest or not n:
        return 0
    if (
        block[12::13] != b"\n" * n
        or block[0::13] != b"+" * n
        or block[1::13] != b"1" * n
        or block[2::13].translate(None, _NXX_LEAD)
        or block[5::13].translate(None, _NXX_LEAD)
        # with '+' and '\n' where they must be, "only they remain" means all else is digits
        or len(block.translate(None, _DIGITS)) != 2 * n
    ):
        return 0
    return n


def _all_nanp_national(block: bytes) -> int:
    """How many lines `block` holds if every one is exactly "NXXNXXXXXX\\n", else 0."""
    n, rest = divmod(len(block), 11)
    if rest or not n:
        return 0
    if (
        block[10::11] != b"\n" * n
        or block[0::11].translate(None, _NXX_LEAD)
        or block[3::11].translate(None, _NXX_LEAD)
        or len(block.translate(None, _DIGITS)) != n
    ):
        return 0
    return n


class UnreadableLine(Exception):
    """A line is not UTF-8 text (the whole file is refused, as COPY would)."""

    def __init__(self, line_no: int, why: str) -> None:
        self.line_no = line_no
        super().__init__(f"line {line_no} {why}")


@dataclass
class LineScan:
    """Running totals over one file: physical lines read, number lines, rejected lines."""

    line_no: int = 0
    lines: int = 0  # lines holding a number (imported or rejected)
    rejected: int = 0
    rejected_lines: list[tuple[int, str]] = field(default_factory=list)
    unreadable: UnreadableLine | None = None  # set by whoever stops reading at such a line

    def block(self, data: bytes) -> bytes:
        """E.164 numbers, one per line, for `data` (whole lines, each ending in a newline)."""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        if self.line_no == 0 and data:  # the first line may be a CSV header: read it carefully
            first = data.index(b"\n") + 1
            return self._line_by_line(data[:first]) + self._block(data[first:])
        return self._block(data)

    def _block(self, data: bytes) -> bytes:
        if n := _all_nanp_e164(data):
            self.line_no += n
            self.lines += n
            return data
        if n := _all_nanp_national(data):
            self.line_no += n
            self.lines += n
            return b"+1" + data.replace(b"\n", b"\n+1")[:-2]
        return self._line_by_line(data)

    def _line_by_line(self, data: bytes) -> bytes:
        out: list[str] = []
        for raw_bytes in data.split(b"\n")[:-1]:
            self.line_no += 1
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise UnreadableLine(self.line_no, "is not valid UTF-8 text") from None
            if "\x00" in raw:
                raise UnreadableLine(self.line_no, "holds a NUL byte")
            if not is_content(raw, self.line_no):
                continue
            self.lines += 1
            number = normalize(raw)
            if number is None:
                self.rejected += 1
                if len(self.rejected_lines) < MAX_REPORTED:
                    self.rejected_lines.append((self.line_no, raw))
            else:
                out.append(number)
        return ("\n".join(out) + "\n").encode() if out else b""


async def e164_lines(chunks: AsyncIterator[bytes], scan: LineScan) -> AsyncIterator[bytes]:
    """The numbers of a file arriving in `chunks`, as COPY text (one E.164 number a line).

    Once a line is rejected nothing more is yielded (the import will not happen), but the
    rest of the file is still read so that the report counts every rejected line.
    """
    tail = b""
    async for chunk in chunks:
        data = tail + chunk
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        if cut:
            out = scan.block(data[:cut])
            if out and not scan.rejected:
                yield out
    if tail:
        out = scan.block(tail + b"\n")
        if out and not scan.rejected:
            yield out
