"""The public shape of a logged event and the type filters subscribers use.

An event's public id is its `seq`: assigned by the sequencer in commit order,
so "everything after id N" is a question with one stable answer. The same
JSON goes on the Redis bus, into SSE `data:` lines, the JSON page and webhook
bodies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.core import jsonio

# The columns every reader selects (tenant_id is for routing, not part of the public JSON).
COLUMNS = "seq, tenant_id, type, subject, trace_id, data, created_at"

ONE_TYPE = r"(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)"
_PATTERN = re.compile(f"^{ONE_TYPE}$")
# The grammar of a `types` list as the OpenAPI document states it: patterns, comma-separated.
TYPES_PATTERN = rf"^\s*{ONE_TYPE}?\s*(,\s*{ONE_TYPE}?\s*)*$"


def public_event(row: Mapping[str, Any]) -> dict[str, Any]:
    created: datetime = row["created_at"]
    return {
        "id": row["seq"],
        "type": row["type"],
        "subject": row["subject"],
        "trace_id": row["trace_id"],
        "data": row["data"],
        "created_at": created.isoformat(),
    }


def event_json(row: Mapping[str, Any]) -> str:
    """One line of JSON (no raw newlines: safe as a single SSE `data:` line)."""
    return jsonio.dumps_str(public_event(row))


def spliced_event_json(row: Mapping[str, Any]) -> str:
    """`event_json` of a row that carries its data as PostgreSQL's text of it (`data_json`,
    e.g. `data::text`), spliced in, not decoded and encoded again: the sequencer publishes
    every event, and that round trip through Python objects was most of its CPU. The same
    JSON value; only the data's whitespace is PostgreSQL's (`{"a": 1}`), still one line
    (jsonb's text escapes every control character)."""
    created: datetime = row["created_at"]
    return jsonio.dumps_str(
        {
            "id": row["seq"],
            "type": row["type"],
            "subject": row["subject"],
            "trace_id": row["trace_id"],
            "data": jsonio.raw(row["data_json"]),
            "created_at": created.isoformat(),
        }
    )


def sse_frame(seq: int, type_: str, data: str) -> bytes:
    return f"id: {seq}\nevent: {type_}\ndata: {data}\n\n".encode()


@dataclass(frozen=True)
class TypeFilter:
    """Event type patterns: exact (`message.delivered`), prefix (`message.*`) or `*`."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    everything: bool

    @classmethod
    def parse(cls, patterns: Iterable[str] | str | None) -> TypeFilter:
        if patterns is None:
            return ALL_TYPES
        if isinstance(patterns, str):
            patterns = [p for p in (s.strip() for s in patterns.split(",")) if p]
        items = list(patterns)
        for p in items:
            if not _PATTERN.match(p):
                raise ValueError(
                    f"{p!r} is not an event type pattern (e.g. message.delivered, message.*, *)"
                )
        if not items or "*" in items:
            return ALL_TYPES
        exact = frozenset(p for p in items if not p.endswith(".*"))
        prefixes = tuple(sorted(p[:-1] for p in items if p.endswith(".*")))
        return cls(exact, prefixes, False)

    def matches(self, type_: str) -> bool:
        return self.everything or type_ in self.exact or type_.startswith(self.prefixes)

    def like_patterns(self) -> list[str] | None:
        """SQL LIKE patterns for the same filter (None: no filter)."""
        if self.everything:
            return None

        def esc(s: str) -> str:
            return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

        return [esc(e) for e in sorted(self.exact)] + [esc(p) + "%" for p in self.prefixes]

    def key(self) -> tuple[Any, ...]:
        return (self.everything, self.exact, self.prefixes)


ALL_TYPES = TypeFilter(frozenset(), (), True)


def validate_patterns(patterns: list[str]) -> list[str]:
    TypeFilter.parse(patterns)
    return sorted(set(patterns)) or ["*"]
