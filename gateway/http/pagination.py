"""The one list envelope and keyset cursors, shared by every list endpoint.

Every list answers ``{"data": [...], "next_cursor": "..." | null}``. A list is ordered by a
key that is unique and never changes for a row (``(created_at, id)`` newest first for
messages and calls, ``name`` for templates, ...), and the cursor is that key of the last row
of the page. Keyset pages — not OFFSET — because a row added while a client pages through
must neither shift a row it has not seen yet onto a page it already read (a gap) nor push a
row it has seen onto the next page (a duplicate).

The cursor is opaque to clients (base64url of the resource name and the key values): they
pass it back unchanged as ``?cursor=``. Naming the resource inside it makes a cursor from one
list a clear 422 on another rather than a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.errors import ValidationFailed

T = TypeVar("T")
Row = TypeVar("Row")
KeyPart = datetime | uuid.UUID | int | str


def _bigint(value: Any) -> int:
    """A JSON integer that fits the bigint key it stands for (the lists' integer keys are
    bigint): a forged 2**64 would fail at the query, as a 500, not here, as a 422."""
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise ValueError("not a bigint")
    return value


_PARSERS: dict[type, Callable[[Any], Any]] = {
    datetime: datetime.fromisoformat,
    uuid.UUID: uuid.UUID,
    int: _bigint,
    str: str,
}


class Page(BaseModel, Generic[T]):
    """The list envelope. Subclass it per resource (``class MessageList(Page[Message])``) so
    the OpenAPI document names each list."""

    data: list[T]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


class ListQuery(BaseModel):
    """The paging parameters every list takes; a resource adds its filters by subclassing."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=50, ge=1, le=500, description="rows per page")
    cursor: str | None = Field(
        default=None,
        max_length=512,
        description="the next_cursor of the previous page (opaque)",
    )


def _plain(value: KeyPart) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def encode_cursor(resource: str, key: Sequence[KeyPart]) -> str:
    raw = json.dumps([resource, *(_plain(v) for v in key)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(resource: str, cursor: str | None, kinds: Sequence[type]) -> tuple[Any, ...]:
    """The key values of `cursor` typed as `kinds`, or a tuple of None for the first page.

    Anything that is not a cursor this list issued is a 422 ``invalid_cursor``."""
    if cursor is None:
        return tuple(None for _ in kinds)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
        if not isinstance(parts, list) or parts[:1] != [resource] or len(parts) != len(kinds) + 1:
            raise ValueError("not a cursor of this list")
        values = tuple(_PARSERS[kind](v) for kind, v in zip(kinds, parts[1:], strict=True))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "cursor: not a cursor this list issued (pass next_cursor back unchanged)",
            code="invalid_cursor",
        ) from None
    for v in values:
        if isinstance(v, datetime) and v.tzinfo is None:
            raise ValidationFailed("cursor: not a cursor this list issued", code="invalid_cursor")
    return values


def page_of(
    resource: str,
    rows: Sequence[Row],
    limit: int,
    key: Callable[[Row], Sequence[KeyPart]],
) -> tuple[list[Row], str | None]:
    """The first `limit` rows and the cursor after them; the repo fetched ``limit + 1`` rows so
    that the last page says so (``next_cursor: null``) without an extra count query."""
    page = list(rows[:limit])
    if len(rows) <= limit or not page:
        return page, None
    return page, encode_cursor(resource, key(page[-1]))
