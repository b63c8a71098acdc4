"""SMS segment counting: GSM-7 / UCS-2 limits, escapes and surrogate pairs at boundaries."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    count_segments,
    encoding_for,
    segment_starts,
    split_segments,
)

EXTENSION_CHARS = "^{}[]~|\\€\f"
EMOJI = "😀"  # outside the BMP: one code point, two UTF-16 units


def test_alphabet_sizes() -> None:
    # 128 code points in the default table minus ESC; 10 in the extension table.
    assert len(GSM7_BASIC) == 127
    assert GSM7_EXTENSION == frozenset(EXTENSION_CHARS)
    assert not GSM7_BASIC & GSM7_EXTENSION


@pytest.mark.parametrize(
    ("text", "encoding", "segments", "units", "part_lengths"),
    [
        ("", "GSM-7", 0, 0, []),
        ("a", "GSM-7", 1, 1, [1]),
        ("a" * 160, "GSM-7", 1, 160, [160]),
        ("a" * 161, "GSM-7", 2, 161, [153, 8]),
        ("a" * 306, "GSM-7", 2, 306, [153, 153]),
        ("a" * 307, "GSM-7", 3, 307, [153, 153, 1]),
        # extension characters cost two septets
        ("€" * 80, "GSM-7", 1, 160, [80]),
        ("€" * 81, "GSM-7", 2, 162, [76, 5]),
        ("a" * 159 + "€", "GSM-7", 2, 161, [153, 7]),
        ("a" * 158 + "€", "GSM-7", 1, 160, [159]),
        # the escape may not be split: the 153rd septet stays empty
        ("a" * 152 + "€" + "a" * 10, "GSM-7", 2, 164, [152, 11]),
        ("a" * 152 + "^" + "a" * 8, "GSM-7", 2, 162, [152, 9]),
        # "{" still fits exactly (septets 152-153); "}" starts segment two
        ("a" * 151 + "{}" + "a" * 8, "GSM-7", 2, 163, [152, 9]),
        ("a" * 153 + "|" + "a" * 6, "GSM-7", 2, 161, [153, 7]),
        # GSM-7 basic-table accents stay GSM-7; a lower-case ç does not exist there
        ("Ça coûte é à ñ", "UCS-2", 1, 14, [14]),
        ("Ça va é à ñ ü Ø", "GSM-7", 1, 15, [15]),
        ("ç", "UCS-2", 1, 1, [1]),
        ("\r\n", "GSM-7", 1, 2, [2]),
        # UCS-2: 70 / 67 UTF-16 units
        ("ł" * 70, "UCS-2", 1, 70, [70]),
        ("ł" * 71, "UCS-2", 2, 71, [67, 4]),
        (EMOJI * 35, "UCS-2", 1, 70, [35]),
        (EMOJI * 36, "UCS-2", 2, 72, [33, 3]),
        ("a" * 69 + EMOJI, "UCS-2", 2, 71, [67, 3]),
        # a surrogate pair is never split: unit 67 stays empty
        ("a" * 66 + EMOJI + "a" * 10, "UCS-2", 2, 78, [66, 11]),
        # one non-GSM character switches the whole message to UCS-2
        ("a" * 100 + "—", "UCS-2", 2, 101, [67, 34]),
    ],
)
def test_count_and_split(
    text: str, encoding: str, segments: int, units: int, part_lengths: list[int]
) -> None:
    count = count_segments(text)
    assert (count.encoding, count.segments, count.units, count.chars) == (
        encoding,
        segments,
        units,
        len(text),
    )
    parts = split_segments(text)
    assert [len(p) for p in parts] == part_lengths
    assert "".join(parts) == text


@pytest.mark.parametrize("ch", list(EXTENSION_CHARS))
def test_each_extension_char_costs_two_septets(ch: str) -> None:
    assert count_segments(ch).units == 2
    assert count_segments("a" * 158 + ch).segments == 1
    assert count_segments("a" * 159 + ch).segments == 2
    # at the multi-part boundary the escape moves whole to the next segment
    parts = split_segments("a" * 152 + ch + "a" * 20)
    assert parts[0] == "a" * 152
    assert parts[1].startswith(ch)


def test_per_segment_and_remaining() -> None:
    one = count_segments("hello")
    assert (one.per_segment, one.remaining) == (160, 155)
    two = count_segments("a" * 161)
    assert (two.per_segment, two.last_segment_units, two.remaining) == (153, 8, 145)
    assert count_segments("").remaining == 0
    assert count_segments(EMOJI * 36).remaining == 67 - 6


def test_segment_starts() -> None:
    assert segment_starts("") == []
    assert segment_starts("a" * 10) == [0]
    assert segment_starts("a" * 152 + "€" + "a" * 200) == [0, 152, 152 + 152]


def _units(text: str) -> int:
    if encoding_for(text) == "GSM-7":
        return sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    return len(text.encode("utf-16-le")) // 2


gsm_text = st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENSION), max_size=800)
any_text = st.text(max_size=500)
mixed_text = st.text(
    alphabet=st.sampled_from([*"ab€^{", "ł", EMOJI, "é", "\n", "~"]),
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(gsm_text, any_text, mixed_text))
def test_split_properties(text: str) -> None:
    count = count_segments(text)
    parts = split_segments(text)
    assert "".join(parts) == text
    assert len(parts) == count.segments
    assert count.units == _units(text)
    single, multi = (160, 153) if count.encoding == "GSM-7" else (70, 67)
    if not text:
        assert count.segments == 0
    elif count.units <= single:
        assert count.segments == 1
    else:
        # every part fits, in the whole message's encoding; splits are only at
        # code-point boundaries, so no escape or surrogate pair is ever cut
        assert all(0 < _units_in(p, count.encoding) <= multi for p in parts)
        # a part is only short when the next character would not fit
        for part, nxt in itertools.pairwise(parts):
            cost = 2 if _units_in(nxt[0], count.encoding) == 2 else 1
            assert _units_in(part, count.encoding) + cost > multi
        assert count.segments >= math.ceil(count.units / multi)
        assert count.last_segment_units == _units_in(parts[-1], count.encoding)


def _units_in(part: str, encoding: str) -> int:
    if encoding == "GSM-7":
        return sum(2 if ch in GSM7_EXTENSION else 1 for ch in part)
    return len(part.encode("utf-16-le")) // 2


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_encoding_is_gsm_only_when_every_char_is(text: str) -> None:
    expected = all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)
    assert (encoding_for(text) == "GSM-7") is expected
