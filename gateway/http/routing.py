"""Declared routes: one decorator gives a handler its auth, body/query parsing and OpenAPI entry.

Handlers receive validated pydantic models and return pydantic models (or an
aiohttp response for streams). Because the OpenAPI document is generated from
the same declarations, it cannot drift from the handlers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.core import jsonio
from gateway.core.errors import Problem, ValidationFailed
from gateway.http import examples
from gateway.http.auth import authenticate

Handler = Callable[..., Awaitable[Any]]
# pydantic custom error types that are also stable API error codes.
CUSTOM_ERROR_CODES = frozenset({"invalid_phone_number", "invalid_email_address", "flow_node_kind"})
# A JSON \u0000 escape (preceded by an even number of backslashes, so not "\\u0000"):
# PostgreSQL text and jsonb cannot hold U+0000, so it is refused here, not at an INSERT.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def validation_problem(exc: ValidationError, where: str) -> ValidationFailed:
    errors = [
        {
            "field": ".".join(str(p) for p in e["loc"]) or where,
            "message": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors(include_url=False)
    ]
    first = errors[0]
    code = first["type"] if first["type"] in CUSTOM_ERROR_CODES else None
    return ValidationFailed(f"{first['field']}: {first['message']}", code=code, errors=errors)


def is_json(content_type: str) -> bool:
    """application/json, or a structured-syntax type such as application/merge-patch+json."""
    kind, _, subtype = content_type.lower().partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class UnsupportedMediaType(Problem):
    """A body that is not declared JSON is refused, not guessed at: a form post or a text body
    parsed as JSON by luck would be accepted one day and not the next."""

    status, code, title = 415, "unsupported_media_type", "Unsupported media type"

    def __init__(self, given: str) -> None:
        super().__init__(
            f"the body must be JSON, sent with Content-Type: application/json (got {given!r})"
        )


def json_response(
    model: BaseModel | dict[str, Any] | list[Any],
    status: int = 200,
    *,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The one way a JSON body is answered: a pydantic model by its own serializer, anything
    else by gateway/core/jsonio.py (aiohttp's `web.json_response` would use json.dumps)."""
    if isinstance(model, BaseModel):
        return web.Response(
            body=model.__pydantic_serializer__.to_json(model, by_alias=True),
            status=status,
            content_type=content_type,
            headers=headers,
        )
    return web.Response(
        body=jsonio.dumps(model),
        status=status,
        content_type=content_type,
        charset="utf-8",
        headers=headers,
    )


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    scope: str | None
    public: bool
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    stream: str | None
    also: tuple[int, ...] = ()  # further success statuses (an upsert: 201 created, 200 updated)

    @property
    def operation_id(self) -> str:
        words = re.sub(r"[^a-zA-Z0-9]+", "_", self.path).strip("_")
        return f"{self.method.lower()}_{words}"

    def as_handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self(request)

        handle.__name__ = self.handler.__name__
        return handle

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if not self.public:
            await authenticate(request, self.scope)
        if self.query is not None:
            if any("\x00" in v for v in request.query.values()):
                raise ValidationFailed(
                    "the query must not contain the NUL character (U+0000)", code="nul_character"
                )
            try:
                kwargs["query"] = self.query.model_validate(dict(request.query))
            except ValidationError as exc:
                raise validation_problem(exc, "query") from None
        if self.body is not None:
            raw = await request.read()
            if raw and not is_json(request.content_type):
                raise UnsupportedMediaType(request.content_type)
            if _JSON_NUL.search(raw):
                raise ValidationFailed(
                    "text must not contain the NUL character (U+0000)", code="nul_character"
                )
            try:
                kwargs["body"] = self.body.model_validate_json(raw or b"{}")
            except ValidationError as exc:
                if any(e["type"] == "json_invalid" for e in exc.errors()):
                    raise Problem("The body is not valid JSON", code="invalid_json") from None
                raise validation_problem(exc, "body") from None
        result = await self.handler(request, **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        return json_response(result, self.status)


@dataclass
class RouteTable:
    """The routes of one feature package, installed by the app factory."""

    tag: str
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        scope: str | None = None,
        public: bool = False,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        stream: str | None = None,
        also: tuple[int, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    summary,
                    self.tag,
                    scope,
                    public,
                    body,
                    query,
                    response,
                    status,
                    errors,
                    stream,
                    also,
                )
            )
            return handler

        return register

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)

    def install(self, app: web.Application) -> None:
        for ep in self.endpoints:
            app.router.add_route(ep.method, ep.path, ep.as_handler(), name=ep.operation_id)


_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "stable machine-readable error code"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


def openapi_document(tables: list[RouteTable], *, title: str, version: str) -> dict[str, Any]:
    """OpenAPI 3.1 built from the route declarations and their pydantic models."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Problem": _PROBLEM_SCHEMA}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for table in tables:
        for ep in table.endpoints:
            op: dict[str, Any] = {
                "summary": ep.summary,
                "operationId": ep.operation_id,
                "tags": [ep.tag],
                "responses": {},
            }
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PATH_PARAM.findall(ep.path)
            ]
            if ep.query is not None:
                qschema = ep.query.model_json_schema()
                required = set(qschema.get("required", []))
                for name, prop in qschema.get("properties", {}).items():
                    param = {"name": name, "in": "query", "required": name in required}
                    if "description" in prop:  # where renderers show it (Swagger UI)
                        param["description"] = prop["description"]
                    params.append(param | {"schema": prop})
            if params:
                op["parameters"] = params
            if ep.body is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref(ep.body)}},
                }
            if ep.stream is not None:
                op["responses"][str(ep.status)] = {
                    "description": "stream",
                    "content": {ep.stream: {"schema": {"type": "string"}}},
                }
            elif ep.response is not None:
                for status in (ep.status, *ep.also):
                    op["responses"][str(status)] = {
                        "description": {201: "Created", 202: "Accepted"}.get(status, "OK"),
                        "content": {"application/json": {"schema": ref(ep.response)}},
                    }
            else:
                op["responses"][str(ep.status)] = {"description": "OK"}
            codes = set(ep.errors)
            if not ep.public:
                codes |= {401, 403}
            if ep.body is not None or ep.query is not None:
                codes |= {400, 422}
            if ep.body is not None:
                codes |= {415}  # unsupported_media_type: the body is not sent as JSON
            if ep.path.startswith(("/v1/", "/webhooks/")):
                codes |= {503}  # database_unavailable / redis_unavailable, with Retry-After
            for code in sorted(codes):
                op["responses"][str(code)] = {"description": "error", "content": problem}
            if not ep.public:
                # OpenAPI 3.1 lets a non-OAuth scheme list the roles it needs: the API key scope
                op["security"] = [{"bearer": [ep.scope] if ep.scope else []}]
                op["x-required-scope"] = ep.scope
            paths.setdefault(ep.path, {})[ep.method.lower()] = op
    doc = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "tk_…"}
            },
        },
    }
    examples.annotate(doc)  # an example, the scope and a curl line per operation (/docs)
    return doc
