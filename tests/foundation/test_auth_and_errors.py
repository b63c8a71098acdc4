"""Auth and errors as a client meets them: bearer keys, scopes, problem+json everywhere."""

from gateway.tenants.service import revoke_key
from tests.helpers import auth

PROBLEM = "application/problem+json"


async def test_whoami_with_a_valid_key(client, make_key):
    token = await make_key("acme")
    resp = await client.get("/v1/whoami", headers=auth(token))
    assert resp.status == 200
    body = await resp.json()
    assert body["tenant"] == "acme"
    assert token.startswith("tk_" + body["key_id"] + "_")
    assert "messages:write" in body["scopes"]
    assert resp.headers["X-Request-Id"]


async def test_bad_keys_get_the_same_401_that_reveals_nothing(client, make_key, pg_pool):
    token = await make_key("acme")
    key_id = token[3:19]
    revoked = await make_key("acme")
    await revoke_key(pg_pool, revoked[3:19])
    candidates = {
        "missing": {},
        "not bearer": {"Authorization": f"Basic {token}"},
        "garbage": auth("nonsense"),
        "unknown key id": auth("tk_0000000000000000_" + token[20:]),
        "wrong secret": auth(f"tk_{key_id}_" + "A" * 43),
        "revoked": auth(revoked),
    }
    bodies = set()
    for name, headers in candidates.items():
        resp = await client.get("/v1/whoami", headers=headers)
        assert resp.status == 401, name
        assert resp.content_type == PROBLEM
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
        assert body["code"] == "unauthorized"
        bodies.add((body["title"], body["detail"]))
    assert len(bodies) == 1


async def test_revocation_takes_effect_at_once(client, make_key, pg_pool):
    token = await make_key("acme")
    assert (await client.get("/v1/whoami", headers=auth(token))).status == 200
    await revoke_key(pg_pool, token)
    assert (await client.get("/v1/whoami", headers=auth(token))).status == 401


async def test_missing_scope_is_403(aiohttp_client, settings, make_key):
    from gateway.app import create_app
    from gateway.http.routing import RouteTable

    app = create_app(settings, role="api")
    table = RouteTable(tag="test")

    @table.get("/v1/_scoped", summary="needs messages:read", scope="messages:read")
    async def scoped(request):
        return {"ok": True}

    table.install(app)
    client = await aiohttp_client(app)
    narrow = await make_key("acme", scopes=["calls:read"])
    resp = await client.get("/v1/_scoped", headers=auth(narrow))
    assert resp.status == 403 and resp.content_type == PROBLEM
    assert (await resp.json())["required_scope"] == "messages:read"
    wide = await make_key("acme", scopes=["messages:read"])
    assert (await client.get("/v1/_scoped", headers=auth(wide))).status == 200


async def test_unknown_route_and_wrong_method_are_problem_json(client):
    resp = await client.get("/v1/does-not-exist")
    assert resp.status == 404 and resp.content_type == PROBLEM
    assert (await resp.json())["code"] == "not_found"
    resp = await client.delete("/healthz")
    assert resp.status == 405 and resp.content_type == PROBLEM
    assert (await resp.json())["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_text_postgresql_cannot_store_is_a_422_on_every_route(client, make_key, pg_pool):
    """U+0000 fits JSON but not PostgreSQL text/jsonb: refused at the edge, never a 500."""
    headers = auth(await make_key("acme"))
    for path, body in (
        ("/v1/templates", {"name": "otp", "body": "code\u0000"}),
        ("/v1/messages", {"to": "+14155550100", "body": "hi", "metadata": {"k": "a\u0000"}}),
        ("/v1/webhook-endpoints", {"url": "https://example.com/\u0000"}),
    ):
        resp = await client.post(path, json=body, headers=headers)  # sent as "\u0000"
        assert resp.status == 422 and resp.content_type == PROBLEM, path
        assert (await resp.json())["code"] == "nul_character", path
    resp = await client.get("/v1/usage?from=%00", headers=headers)
    assert resp.status == 422 and (await resp.json())["code"] == "nul_character"
    # An escaped backslash before "u0000" is ordinary text.
    ok = await client.post(
        "/v1/templates",
        data='{"name": "raw", "body": "C:\\\\u0000"}',
        headers=headers | {"Content-Type": "application/json"},
    )
    assert ok.status == 201, await ok.text()  # a new template: created
    assert (
        await pg_pool.fetchval("SELECT body FROM message_templates WHERE name = 'raw'")
        == "C:\\u0000"
    )


async def test_healthz_readyz_and_metrics(client, make_key):
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert all(body["checks"][name]["ok"] for name in ("postgres", "redis", "migrations"))
    await client.get("/v1/whoami")
    text = await (await client.get("/metrics")).text()
    assert 'trunkline_http_requests_total{method="GET",route="/v1/whoami",status="401"} 1.0' in text
    assert "trunkline_http_request_duration_seconds_bucket" in text
    assert "trunkline_db_pool_connections" in text


async def test_readyz_names_what_is_not_ready(aiohttp_client, settings, pg_pool):
    from gateway.app import create_app
    from gateway.settings import load_settings

    broken = load_settings(
        database={"url": settings.database_url(), "migrate_on_start": False},
        redis={"url": "redis://127.0.0.1:1"},
    )
    await pg_pool.execute("DELETE FROM schema_migrations")
    client = await aiohttp_client(create_app(broken, role="api"))
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert resp.content_type == PROBLEM
    body = await resp.json()
    assert body["code"] == "not_ready"
    assert body["checks"]["postgres"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["migrations"]["ok"] is False
    assert "redis" in body["detail"] and "migrations" in body["detail"]


async def test_readyz_503_is_valid_problem_json_without_internal_error_text(
    aiohttp_client, settings
):
    """`status` is the HTTP status (an int), and the public body names the failed component in
    fixed words: the exception text (host, port, errno) goes to the log, once per change."""
    from structlog.testing import capture_logs

    from gateway.app import create_app
    from gateway.settings import load_settings

    broken = load_settings(
        database={"url": settings.database_url(), "migrate_on_start": False},
        redis={"url": "redis://127.0.0.1:1"},
    )
    client = await aiohttp_client(create_app(broken, role="api"))
    with capture_logs() as logs:
        first = await client.get("/readyz")
        second = await client.get("/readyz")
    for resp in (first, second):
        assert resp.status == 503
        assert resp.content_type == PROBLEM
        text = await resp.text()
        body = await resp.json()
        assert body["status"] == 503 and isinstance(body["status"], int)
        assert {"type", "title", "code", "detail"} <= body.keys()
        assert body["checks"]["redis"] == {"ok": False, "detail": "unreachable"}
        assert body["checks"]["postgres"]["ok"] is True
        for leak in ("127.0.0.1", ":1", "Error", "Connection", "refused"):
            assert leak not in text, (leak, text)
    failures = [e for e in logs if e["event"] == "readiness check failed"]
    assert len(failures) == 1  # logged when it changed, not per poll
    assert failures[0]["component"] == "redis" and "127.0.0.1" in failures[0]["error"]
