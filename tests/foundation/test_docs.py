"""/docs is Swagger UI, vendored in the package (no CDN) with its licence, rendering
/openapi.json; every operation there has an example and names the scope it needs, and the
examples of the creates work as printed. The browser side is tests/dashboard/test_docs_browser.py."""

from __future__ import annotations

import json
import re

from tests.helpers import auth


async def test_the_docs_page_and_its_vendored_assets_are_served(client):
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    page = await resp.text()
    assets = re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', page)
    assert set(assets) == {
        "/docs/static/swagger-ui.css",
        "/docs/static/docs.css",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/docs.js",
    }
    for path in assets:
        asset = await client.get(path)
        assert asset.status == 200, path
        text = await asset.text()
        assert not re.search(r"""(?:src|href|url)\s*[=:(]\s*["']?https?://""", text[:100_000])
    bundle = await (await client.get("/docs/static/swagger-ui-bundle.js")).text()
    assert len(bundle) > 1_000_000 and "SwaggerUIBundle" in bundle
    init = await (await client.get("/docs/static/docs.js")).text()
    assert 'url: "/openapi.json"' in init and "persistAuthorization: false" in init
    licence = await client.get("/docs/static/LICENSE")
    assert licence.status == 200 and "Apache License" in await licence.text()
    assert "SmartBear" in await (await client.get("/docs/static/NOTICE")).text()
    assert (await client.get("/docs/static/..%2Fdocs.py")).status == 404
    assert (await client.get("/docs/static/index.html")).status == 404


async def test_every_operation_has_an_example_and_names_its_scope(client):
    doc = await (await client.get("/openapi.json")).json()
    ops = [(p, op) for p, methods in doc["paths"].items() for op in methods.values()]
    assert len(ops) > 50
    for path, op in ops:
        name = op["operationId"]
        assert "```sh\ncurl " in op["description"] and path.split("{")[0] in op["description"]
        if "security" in op:
            scope = op["x-required-scope"]
            assert op["security"] == [{"bearer": [scope] if scope else []}], name
            expected = f"the `{scope}` scope" if scope else "an API key (any scope)"
            assert expected in op["description"], name
        else:
            assert op["description"].startswith("Public: no API key."), name
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            assert "example" in body, name
        for code, response in op["responses"].items():
            for media in response.get("content", {}).values() if code.startswith("2") else ():
                assert "example" in media, (name, code)
    messages = doc["paths"]["/v1/messages"]["get"]
    assert {p["name"] for p in messages["parameters"]} >= {"status", "to", "cursor", "limit"}


async def test_the_create_examples_work_as_printed(client, make_key):
    token = await make_key("acme")
    doc = await (await client.get("/openapi.json")).json()
    for path in ("/v1/messages", "/v1/calls", "/v1/templates", "/v1/dnc", "/v1/campaigns",
                 "/v1/ivr/flows", "/v1/webhook-endpoints"):  # fmt: skip
        op = doc["paths"][path]["post"]
        body = op["requestBody"]["content"]["application/json"]["example"]
        resp = await client.post(path, json=body, headers=auth(token))
        assert resp.status == 201, (path, body, await resp.text())
        assert f"-d '{json.dumps(body)}'" in op["description"], path
        assert (
            "201" in op["responses"]
            and "example" in op["responses"]["201"]["content"]["application/json"]
        ), path
