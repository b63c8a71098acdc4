"""/docs: rendered on the server from /openapi.json — parameters, scope, body schema, an example
per operation — and the examples of the main creates work as printed."""

from __future__ import annotations

import html
import json
import re

from tests.helpers import auth


def operation(page: str, operation_id: str) -> str:
    start = page.index(f"id='{operation_id}'")
    end = page.find("<div class='op'", start)
    return page[start : end if end > 0 else len(page)]


async def test_docs_show_parameters_scope_bodies_and_an_example_per_operation(client):
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    doc = await (await client.get("/openapi.json")).json()
    ops = [op for methods in doc["paths"].values() for op in methods.values()]
    for op in ops:
        section = operation(page, op["operationId"])
        assert "example:<pre>curl" in section, op["operationId"]
        if op.get("x-required-scope"):
            assert f"scope: <code>{op['x-required-scope']}</code>" in section
        for p in op.get("parameters", []):
            assert f"<td><code>{html.escape(p['name'])}</code></td>" in section, p["name"]
    listing = operation(page, "get_v1_messages")
    assert "<code>cursor</code>" in listing and "pattern" in listing
    assert "request body (application/json)" in operation(page, "post_v1_messages")


async def test_the_create_examples_work_as_printed(client, make_key):
    token = await make_key("acme")
    page = await (await client.get("/docs")).text()
    for operation_id, path, expected in (
        ("post_v1_messages", "/v1/messages", 201),
        ("post_v1_calls", "/v1/calls", 201),
        ("post_v1_templates", "/v1/templates", 201),
        ("post_v1_dnc", "/v1/dnc", 201),
    ):
        example = html.unescape(
            re.search(r"example:<pre>(.*?)</pre>", operation(page, operation_id), re.S).group(1)
        )
        body = json.loads(re.search(r"-d '(.*)'", example).group(1))
        assert f"localhost:8080{path}" in example and "Content-Type: application/json" in example
        resp = await client.post(path, json=body, headers=auth(token))
        assert resp.status == expected, (operation_id, body, await resp.text())
