"""/docs: the API reference, rendered on the server from the same OpenAPI document.

Rendered once per process from /openapi.json's dict, so it cannot drift from the handlers and
needs no script, CDN or build step: per operation its method and path, summary, the scope it
needs, a table of its parameters (in, required, type and constraints, description), the
request body's schema with an example built from that schema, its responses, and a `curl`
line that works as printed against `make run`.
"""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1040px; margin: 2rem auto; padding: 0 1rem;
       color: #1d1d1f; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.op { border: 1px solid #e3e3e3; border-radius: 6px; margin: .7rem 0; padding: .5rem .8rem; }
.m { font-weight: 700; display: inline-block; min-width: 4.5rem; }
.GET { color: #0a7; } .POST { color: #06c; } .DELETE { color: #c33; } .PUT { color: #a60; }
.scope { color: #555; font-size: 13px; }
code, pre { font-family: ui-monospace, monospace; font-size: 13px; }
pre { background: #f6f6f6; padding: .5rem; overflow: auto; max-height: 360px; }
table { border-collapse: collapse; font-size: 13px; margin: .4rem 0; }
td, th { border: 1px solid #e3e3e3; padding: 2px 6px; text-align: left; vertical-align: top; }
details summary { cursor: pointer; color: #555; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _Schemas:
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

    def describe(self, schema: dict[str, Any] | None) -> str:
        """`integer ≤ 500`, `string, pattern ^…$` — the constraints a client must meet."""
        s = self.resolve(schema)
        options = [self.resolve(o) for o in s.get("anyOf", [])]
        options = [o for o in options if o.get("type") != "null"]
        if options:
            s = {**options[0], **{k: v for k, v in s.items() if k != "anyOf"}}
        parts = [str(s.get("type", "any"))]
        if "enum" in s:
            parts.append("one of " + ", ".join(map(str, s["enum"])))
        for key, word in (("minimum", "≥"), ("maximum", "≤")):
            if key in s:
                parts.append(f"{word} {s[key]}")
        if "maxLength" in s:
            parts.append(f"at most {s['maxLength']} chars")
        if "format" in s:
            parts.append(str(s["format"]))
        if "pattern" in s:
            parts.append(f"pattern {s['pattern']}")
        return ", ".join(parts)


def _curl(method: str, path: str, op: dict[str, Any], body: Any) -> str:
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


def render(doc: dict[str, Any]) -> str:
    schemas = _Schemas(doc)
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            by_tag.setdefault(op["tags"][0], []).append((path, method.upper(), op))
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(doc['info']['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(doc['info']['title'])} <small>{_e(doc['info']['version'])}</small></h1>",
        "<p>Rendered from <a href='/openapi.json'>/openapi.json</a>. Authenticate with "
        "<code>Authorization: Bearer tk_…</code>; each operation names the scope its key "
        "needs. Errors are <code>application/problem+json</code> with a stable "
        '<code>code</code>. Lists answer <code>{"data": […], "next_cursor": …}</code>.</p>',
        "<nav>" + " · ".join(f"<a href='#{_e(t)}'>{_e(t)}</a>" for t in by_tag) + "</nav>",
    ]
    for tag, ops in by_tag.items():
        out.append(f"<h2 id='{_e(tag)}'>{_e(tag)}</h2>")
        for path, method, op in ops:
            anchor = _e(op["operationId"])
            out.append(f"<div class='op' id='{anchor}'><span class='m {method}'>{method}</span>")
            out.append(f"<code>{_e(path)}</code> — {_e(op['summary'])}")
            if "x-required-scope" in op:
                scope = op["x-required-scope"]
                out.append(
                    f"<div class='scope'>scope: <code>{_e(scope)}</code></div>"
                    if scope
                    else "<div class='scope'>any API key</div>"
                )
            params = op.get("parameters", [])
            if params:
                out.append(
                    "<table><tr><th>parameter</th><th>in</th><th>required</th>"
                    "<th>type</th><th>description</th></tr>"
                )
                for p in params:
                    schema = p.get("schema", {})
                    out.append(
                        f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                        f"<td>{'yes' if p.get('required') else 'no'}</td>"
                        f"<td>{_e(schemas.describe(schema))}</td>"
                        f"<td>{_e(schema.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            body = None
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if content:
                body = schemas.example(content["schema"])
                out.append(
                    "<details><summary>request body (application/json)</summary><pre>"
                    f"{_e(json.dumps(schemas.resolve(content['schema']), indent=2))}</pre>"
                    "</details>"
                )
                out.append(f"<div>example body:<pre>{_e(json.dumps(body, indent=2))}</pre></div>")
            out.append(f"<div>example:<pre>{_e(_curl(method, path, op, body))}</pre></div>")
            for code, response in op.get("responses", {}).items():
                media = response.get("content", {})
                ctype, shown = next(iter(media.items()), (None, None))
                schema = schemas.resolve(shown.get("schema")) if shown else None
                label = f"{code} {_e(response.get('description', ''))}"
                label += f" <code>{_e(ctype)}</code>" if ctype else ""
                pre = f"<pre>{_e(json.dumps(schema, indent=2))}</pre>" if schema else ""
                out.append(f"<details><summary>{label}</summary>{pre}</details>")
            out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)
