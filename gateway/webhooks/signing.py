"""The webhook signature: `Trunkline-Signature: t=<unix seconds>,v1=<hex>`.

v1 = HMAC-SHA256(key = the endpoint secret as UTF-8, message = f"{t}.{body}"),
where body is the exact bytes of the request body. Receivers recompute it over
the raw body, compare in constant time and reject timestamps outside a
tolerance (replay protection). README.md has a copy-paste verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Trunkline-Signature"
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance: float = 300) -> bool:
    """The receiver's check (the same code as the README snippet)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts.get("v1", ""))
