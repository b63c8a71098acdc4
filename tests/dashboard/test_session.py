"""The dashboard's session cookie: what it authorises, for how long, and what ends it."""

from __future__ import annotations

from http.cookies import SimpleCookie

from gateway.core import scopes
from tests.helpers import auth

COOKIE = "trunkline_session"


async def _exchange(client, token: str):
    resp = await client.post("/v1/dashboard/session", headers=auth(token))
    assert resp.status == 201, await resp.text()
    jar = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie"):
        jar.load(header)
    return resp, jar[COOKIE]


def _with(cookie) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={cookie.value}"}


async def test_the_cookie_is_short_lived_httponly_strict_and_stored_hashed(
    client, make_key, pg_pool
):
    token = await make_key("acme")
    resp, cookie = await _exchange(client, token)
    body = await resp.json()
    assert body["tenant"] == "acme" and body["ttl_seconds"] == 900
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert cookie["max-age"] == "900"
    assert cookie.value.startswith("tds_") and token not in cookie.value
    stored = await pg_pool.fetchval("SELECT count(*) FROM dashboard_sessions")
    assert stored == 1
    raw = await pg_pool.fetchval(
        "SELECT count(*) FROM dashboard_sessions WHERE token_hash = convert_to($1, 'UTF8')",
        cookie.value,
    )
    assert raw == 0  # only the hash is kept
    ttl = await pg_pool.fetchval(
        "SELECT extract(epoch FROM expires_at - now()) FROM dashboard_sessions"
    )
    assert 880 < ttl <= 900


async def test_the_cookie_authorises_gets_of_its_tenant_only_and_never_a_write(client, make_key):
    token = await make_key("acme")
    _, cookie = await _exchange(client, token)
    client.session.cookie_jar.clear()  # send the cookie only where the test says so
    stats = await client.get("/v1/stats", headers=_with(cookie))
    assert stats.status == 200
    who = await client.get("/v1/whoami", headers=_with(cookie))
    assert (await who.json())["tenant"] == "acme"
    # CSRF: a state-changing request is never authorised by the cookie.
    for method, path in (
        ("POST", "/v1/messages"),
        ("POST", "/v1/dashboard/session"),
        ("DELETE", "/v1/dnc/+14155550100"),
    ):
        resp = await client.request(
            method,
            path,
            headers=_with(cookie),
            json={"channel": "sms", "to": "+14155550100", "body": "x", "purpose": "transactional"},
        )
        body = await resp.json()
        assert resp.status == 401, (path, body)
        assert "GET requests only" in body["detail"]
    # No cookie, no key: refused.
    assert (await client.get("/v1/stats")).status == 401
    assert (await client.get("/v1/events", headers={"Accept": "text/event-stream"})).status == 401
    # A forged or unknown token is refused like a bad key.
    bad = await client.get("/v1/stats", headers={"Cookie": f"{COOKIE}=tds_forged"})
    assert bad.status == 401


async def test_revoking_the_key_or_expiry_ends_the_session_and_renewal_extends_it(
    client, make_key, pg_pool
):
    from gateway.tenants.service import parse_token, revoke_key

    token = await make_key("acme")
    _, cookie = await _exchange(client, token)
    client.session.cookie_jar.clear()
    await pg_pool.execute("UPDATE dashboard_sessions SET expires_at = now() + interval '10 s'")
    renewed = await client.get("/v1/dashboard/session", headers=_with(cookie))
    assert renewed.status == 200
    assert "Max-Age=900" in renewed.headers["Set-Cookie"]
    ttl = await pg_pool.fetchval(
        "SELECT extract(epoch FROM expires_at - now()) FROM dashboard_sessions"
    )
    assert ttl > 880
    # Expired (by the database's clock): refused, and renewal cannot revive it.
    await pg_pool.execute("UPDATE dashboard_sessions SET expires_at = now() - interval '1 s'")
    assert (await client.get("/v1/stats", headers=_with(cookie))).status == 401
    assert (await client.get("/v1/dashboard/session", headers=_with(cookie))).status == 401
    # Revoking the key kills a live session at once.
    _, cookie = await _exchange(client, token)
    client.session.cookie_jar.clear()
    assert (await client.get("/v1/stats", headers=_with(cookie))).status == 200
    await revoke_key(pg_pool, parse_token(token)[0])
    assert (await client.get("/v1/stats", headers=_with(cookie))).status == 401
    assert (await client.post("/v1/dashboard/session", headers=auth(token))).status == 401


async def test_sign_out_ends_the_session(client, make_key):
    token = await make_key("acme")
    _, cookie = await _exchange(client, token)
    client.session.cookie_jar.clear()
    out = await client.delete("/v1/dashboard/session", headers=_with(cookie))
    assert out.status == 204
    assert (await client.get("/v1/stats", headers=_with(cookie))).status == 401


async def test_trunk_wide_view_needs_ops_read_which_no_default_key_has(client, make_key):
    default = await make_key("acme")
    resp = await client.get("/v1/whoami", headers=auth(default))
    assert "ops:read" not in (await resp.json())["scopes"]
    assert (await client.get("/v1/ops/trunk", headers=auth(default))).status == 403
    ops = await make_key("acme", sorted(scopes.SCOPES))
    resp = await client.get("/v1/ops/trunk", headers=auth(ops))
    body = await resp.json()
    assert resp.status == 200, body
    assert {p["name"] for p in body["pools"]} >= {"api", "campaign", "ivr"}
    assert {b["provider"] for b in body["breakers"]} >= {"sandbox"}
    assert all(b["state"] == "closed" for b in body["breakers"])
    assert isinstance(body["queues"], list)
    sent = await client.post(
        "/v1/messages",
        json={"channel": "sms", "to": "+14155550106", "body": "x", "purpose": "transactional"},
        headers=auth(ops),
    )
    assert sent.status == 201
    body = await (await client.get("/v1/ops/trunk", headers=auth(ops))).json()
    assert "dispatch" in {q["queue"] for q in body["queues"]}, body  # every tenant's jobs


async def test_a_tenant_sees_its_own_queue_depth_and_no_one_elses(client, make_key, pg_pool):
    acme, globex = await make_key("acme"), await make_key("globex")
    ids = {
        name: await pg_pool.fetchval("SELECT id FROM tenants WHERE name = $1", name)
        for name in ("acme", "globex")
    }
    await pg_pool.execute(
        """
        INSERT INTO jobs (queue, tenant_id, payload, max_attempts, run_at, state, dead_at)
        VALUES ('q-test', $1, '{}', 3, now() - interval '30 s', 'ready', NULL),
               ('q-test', $1, '{}', 3, now() + interval '1 hour', 'ready', NULL),
               ('q-test', $1, '{}', 3, now(), 'dead', now()),
               ('q-test', $2, '{}', 3, now(), 'ready', NULL),
               ('q-other', $2, '{}', 3, now(), 'ready', NULL)
        """,
        ids["acme"],
        ids["globex"],
    )
    _, cookie = await _exchange(client, acme)  # what the dashboard uses: the session cookie
    resp = await client.get("/v1/queues", headers=_with(cookie))
    body = await resp.json()
    assert resp.status == 200, body
    (mine,) = body["queues"]
    assert mine["queue"] == "q-test"
    assert (mine["ready"], mine["due"], mine["running"], mine["dead"]) == (2, 1, 0, 1)
    assert mine["oldest_due_s"] >= 29
    theirs = await (await client.get("/v1/queues", headers=auth(globex))).json()
    assert {q["queue"]: q["ready"] for q in theirs["queues"]} == {"q-test": 1, "q-other": 1}
    client.session.cookie_jar.clear()  # the test client kept the session cookie
    assert (await client.get("/v1/queues")).status == 401


async def test_the_page_and_its_assets_are_served_from_the_package(client):
    page = await client.get("/dashboard")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    text = await page.text()
    assert "/dashboard/static/dashboard.js" in text and "http" not in text.replace("http-equiv", "")
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        asset = await client.get(f"/dashboard/static/{name}")
        assert asset.status == 200 and kind in asset.headers["Content-Type"]
    assert (await client.get("/dashboard/static/../../settings.py")).status == 404


async def test_an_open_stream_ends_when_its_key_is_revoked(client, make_key, pg_pool, monkeypatch):
    import asyncio

    import aiohttp

    from gateway.dashboard import sessions
    from gateway.tenants.service import parse_token, revoke_key

    monkeypatch.setattr(sessions, "WATCH_SECONDS", 0.2)
    token = await make_key("acme")
    _, cookie = await _exchange(client, token)
    client.session.cookie_jar.clear()
    stream = await client.get("/v1/events", headers=_with(cookie) | {"Accept": "text/event-stream"})
    assert stream.status == 200
    await stream.content.readuntil(b"\n\n")  # the retry: hint
    await asyncio.sleep(0.5)
    assert not stream.content.at_eof()  # still open while the session stands
    await revoke_key(pg_pool, parse_token(token)[0])

    async def drain() -> None:
        try:
            while await stream.content.read(1024):
                pass
        except aiohttp.ClientPayloadError:
            pass  # cut mid-chunk: the connection was closed under it

    await asyncio.wait_for(drain(), timeout=10)  # the server ended it
    stream.close()
