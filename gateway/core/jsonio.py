"""JSON for the daemon's hot paths, in one place: response bodies, SSE event frames, the
jsonb codec, Redis event payloads. orjson (Rust) where installed, the standard library's
`json` otherwise, with the same output either way:

- compact (no spaces after `,` and `:`), UTF-8 (non-ASCII characters written as they are,
  not as `\\uXXXX` escapes): the same value, fewer bytes;
- values JSON has no type for are written as `str(value)` (a datetime as `2026-01-02
  03:04:05+00:00`, a UUID as its hex form), as the `json.dumps(..., default=str)` calls this
  replaced did; dict keys that are not strings become strings;
- what orjson refuses (an integer beyond 64 bits) falls back to the standard library.

Request bodies are parsed by pydantic's own (Rust) JSON parser in routing.py, not here.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a platform without orjson wheels
    orjson = None  # type: ignore[assignment]

_STDLIB = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)

if orjson is not None:
    _OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
    _orjson_dumps = orjson.dumps
    _EncodeError = orjson.JSONEncodeError

    def dumps(value: Any) -> bytes:
        """`value` as compact UTF-8 JSON bytes."""
        try:
            return _orjson_dumps(value, default=str, option=_OPTIONS)
        except _EncodeError:
            return _STDLIB.encode(value).encode()

    def dumps_str(value: Any) -> str:
        return dumps(value).decode()

    def raw(text: str) -> Any:
        """Already-encoded JSON `text`, written as it is where `dumps` meets it (no decode and
        encode again; its whitespace is kept)."""
        return orjson.Fragment(text)

    loads = orjson.loads

else:  # pragma: no cover

    def dumps(value: Any) -> bytes:
        return _STDLIB.encode(value).encode()

    def dumps_str(value: Any) -> str:
        return _STDLIB.encode(value)

    def raw(text: str) -> Any:
        return json.loads(text)

    loads = json.loads


__all__ = ["dumps", "dumps_str", "loads", "raw"]
