"""Identifiers: UUIDs for rows, W3C-compatible 32-hex trace ids, short request ids."""

from __future__ import annotations

import secrets
import uuid


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_request_id() -> str:
    return secrets.token_hex(8)
