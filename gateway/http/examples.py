"""An example for every operation of the OpenAPI document, made from its own schemas.

`annotate` adds to each operation: an `example` on its JSON request body and on each JSON or
text response it documents, and, in its description, the scope it needs and a `curl` line
that works as printed against `make run` — what /docs (Swagger UI) shows per operation.
Examples come from the schema (its `examples`, default, enum, pattern-free type), so they
cannot drift from the handlers; tests post the main creates' examples and expect a 201.
"""

from __future__ import annotations

import json
from typing import Any

# Examples of the non-JSON answers, by media type (what a client sees on the wire).
_TEXT_EXAMPLES = {
    "text/event-stream": (
        'retry: 2000\n\nid: 41\nevent: message.delivered\ndata: {"seq": 41, "type": '
        '"message.delivered", "subject": "…", "trace_id": "…", "data": {…}}\n\n'
    ),
    "text/plain": '# TYPE trunkline_queue_depth gauge\ntrunkline_queue_depth{queue="dispatch"} 0\n',
    "text/html": "<!doctype html><html lang='en'>…</html>",
    "text/xml": '<?xml version="1.0" encoding="UTF-8"?><Response>…</Response>',
    "application/json": {"openapi": "3.1.0", "info": {"title": "Trunkline API"}, "paths": {}},
}


class Schemas:
    """Resolves `$ref`s of one document and makes a value that fits a schema."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.components = doc.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any] | None) -> dict[str, Any]:
        seen = 0
        while schema and "$ref" in schema and seen < 20:
            schema = self.components.get(schema["$ref"].rsplit("/", 1)[1], {})
            seen += 1
        return schema or {}

    def example(self, schema: dict[str, Any] | None, depth: int = 0) -> Any:
        """A value that fits `schema`: its own example or default, else one made from its type."""
        s = self.resolve(schema)
        if depth > 6:
            return None
        if s.get("examples"):
            return s["examples"][0]
        if "default" in s and s["default"] is not None:
            return s["default"]
        if "enum" in s:
            return s["enum"][0]
        if "const" in s:
            return s["const"]
        for key in ("anyOf", "oneOf", "allOf"):
            options = [o for o in s.get(key, []) if self.resolve(o).get("type") != "null"]
            if options:
                return self.example(options[0], depth + 1)
        kind = s.get("type")
        if kind == "object" or "properties" in s:
            required = set(s.get("required", []))
            props = s.get("properties", {})
            shown = {k: v for k, v in props.items() if k in required} or dict(
                list(props.items())[:3]
            )
            return {k: self.example(v, depth + 1) for k, v in shown.items()}
        if kind == "array":
            return [self.example(s.get("items"), depth + 1)]
        if kind == "integer":
            return s.get("minimum", 1)
        if kind == "number":
            return s.get("minimum", 1.0)
        if kind == "boolean":
            return False
        if s.get("format") == "date-time":
            return "2026-12-01T00:00:00Z"
        if s.get("format") == "uuid":
            return "00000000-0000-4000-8000-000000000000"
        if s.get("format") == "uri":
            return "https://example.com/hook"
        return "string"


def curl(method: str, path: str, op: dict[str, Any], body: Any) -> str:
    parts = ["curl"]
    if method != "GET":
        parts.append(f"-X {method}")
    if "security" in op:
        parts.append('-H "Authorization: Bearer $KEY"')
    if op.get("responses", {}).get("200", {}).get("content", {}).get("text/event-stream"):
        parts.append('-H "Accept: text/event-stream"')
    url = "localhost:8080" + path
    required = [p for p in op.get("parameters", []) if p["in"] == "query" and p.get("required")]
    if required:
        url += "?" + "&".join(f"{p['name']}=…" for p in required)
    parts.append(f'"{url}"' if "?" in url else url)
    if body is not None:
        parts.append("-H 'Content-Type: application/json'")
        parts.append(f"-d '{json.dumps(body)}'")
    return " ".join(parts)


def annotate(doc: dict[str, Any]) -> None:
    """Add the examples and the scope + curl description to every operation of `doc`."""
    schemas = Schemas(doc)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = None
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content is not None:
                body = content["example"] = schemas.example(content["schema"])
            for code, response in op["responses"].items():
                if not code.startswith("2"):
                    continue
                for media_type, media in response.get("content", {}).items():
                    if media_type == "application/json" and "$ref" in media.get("schema", {}):
                        media["example"] = schemas.example(media["schema"])
                    elif media_type in _TEXT_EXAMPLES:
                        media["example"] = _TEXT_EXAMPLES[media_type]
            if "security" in op:
                scope = op.get("x-required-scope")
                who = (
                    f"Requires an API key with the `{scope}` scope."
                    if scope
                    else "Requires an API key (any scope)."
                )
            else:
                who = "Public: no API key."
            example = curl(method.upper(), path, op, body)
            op["description"] = f"{who}\n\nExample:\n\n```sh\n{example}\n```"
