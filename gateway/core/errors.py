"""Errors with a stable machine-readable code, rendered as RFC 9457 problem+json."""

from __future__ import annotations

from typing import Any


class Problem(Exception):
    """An error the API reports to the caller: status, stable `code`, human `detail`."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if title is not None:
            self.title = title
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": f"https://trunkline.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance:
            out["instance"] = instance
        return out | self.extra


class Unauthorized(Problem):
    status, code, title = 401, "unauthorized", "Missing or invalid API key"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="trunkline"'})


class Forbidden(Problem):
    status, code, title = 403, "forbidden", "The API key lacks a required scope"


class NotFound(Problem):
    status, code, title = 404, "not_found", "Not found"


class Conflict(Problem):
    status, code, title = 409, "conflict", "Conflict"


class ValidationFailed(Problem):
    status, code, title = 422, "validation_error", "The request is not valid"
