"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright).

One test walks what an operator sees: the key form and nothing else without a session;
the key exchanged for the cookie; numbers that move as messages and calls are made; the
stream cut server-side while the browser is offline and events are written; and the page
resuming with Last-Event-ID so that the ids it received are exactly the tenant's event log,
with no gap and no duplicate. It saves tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import asyncio

from gateway.core import scopes
from gateway.events import log
from gateway.events.http import HUB
from gateway.events.model import ALL_TYPES
from tests.dashboard.conftest import ARTIFACTS
from tests.helpers import auth

WAIT_MS = 15_000  # generous: the machine is shared


async def _send(client, token: str, to: str = "+14155550100") -> dict:
    resp = await client.post(
        "/v1/messages",
        json={"channel": "sms", "to": to, "body": "Your code is 1234", "purpose": "transactional"},
        headers=auth(token),
    )
    body = await resp.json()
    assert resp.status == 201, body
    return body


async def _call(client, token: str, to: str) -> dict:
    resp = await client.post(
        "/v1/calls", json={"to": to, "purpose": "transactional"}, headers=auth(token)
    )
    body = await resp.json()
    assert resp.status == 201, body
    return body


async def _tenant_log(pg_pool, tenant: str, after: int) -> list[int]:
    tenant_id = await pg_pool.fetchval("SELECT id FROM tenants WHERE name = $1", tenant)
    rows = await log.tenant_page(pg_pool, tenant_id, after, 10_000, ALL_TYPES)
    return [r["seq"] for r in rows]


async def test_the_dashboard_is_live_resumes_without_a_gap_and_refuses_strangers(
    client, make_key, pg_pool, browser
):
    token = await make_key("acme", sorted(scopes.SCOPES))  # with ops:read: trunk-wide panels
    base = str(client.make_url("")).rstrip("/")
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    # A stranger gets the key form and no data; the API refuses the stream.
    await page.goto(base + "/dashboard")
    await page.wait_for_selector("#login-form", state="visible", timeout=WAIT_MS)
    assert await page.is_hidden("#app")
    assert await page.locator("#feed tbody tr").count() == 0
    refused = await page.evaluate(
        "fetch('/v1/events', {headers: {Accept: 'text/event-stream'}}).then(r => r.status)"
    )
    assert refused == 401
    await page.fill("#key", "tk_0000000000000000_wrong")
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#login-error:has-text('401')", timeout=WAIT_MS)
    assert await page.is_hidden("#app")

    # The key once: exchanged for the cookie, then forgotten (script cannot read the cookie).
    await page.fill("#key", token)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#app", state="visible", timeout=WAIT_MS)
    await page.wait_for_selector("#conn[data-state=live]", timeout=WAIT_MS)
    assert await page.input_value("#key") == ""
    assert "trunkline_session" not in await page.evaluate("document.cookie")
    assert token not in await page.content()

    # Its numbers move as messages and calls are made.
    for _ in range(3):
        await _send(client, token)
    await _call(client, token, "+14155550200")  # answers, hangs up
    held = await _call(client, token, "+14155550207")  # answers and stays up: holds a channel
    await page.wait_for_function(
        "() => +(document.querySelector('#mix-messages')?.textContent ?? 0) >= 3",
        timeout=WAIT_MS,
    )
    await page.wait_for_function(
        "() => document.querySelectorAll('#feed tr[data-type^=\"call.\"]').length >= 2",
        timeout=WAIT_MS,
    )
    await page.wait_for_selector(
        "[data-pool$='/api'] .in-use:text-is('1')", timeout=WAIT_MS
    )  # the held call's channel in the api pool's gauge
    await page.wait_for_selector("[data-provider=sandbox] .state-closed", timeout=WAIT_MS)
    await page.wait_for_selector("#queues", timeout=WAIT_MS)  # ops:read: the work queues
    # A campaign's progress bar (a draft: nothing dialled yet).
    created = await client.post(
        "/v1/campaigns",
        json={"name": "spring-renewals", "channel": "voice", "purpose": "marketing"},
        headers=auth(token),
    )
    campaign = await created.json()
    assert created.status == 201, campaign
    added = await client.post(
        f"/v1/campaigns/{campaign['id']}/prospects",
        json={"prospects": [{"number": "+12125552000"}, {"number": "+12125552070"}]},
        headers=auth(token),
    )
    assert added.status == 200, await added.text()
    await page.wait_for_selector(
        f"[data-campaign='{campaign['id']}']:has-text('0 / 2 prospects done')", timeout=WAIT_MS
    )
    first_seen = await page.evaluate("window.trunklineDashboard.seenIds[0]")
    assert first_seen is not None
    assert await page.evaluate("+document.querySelector('#rate-messages').textContent") >= 0

    # Cut the stream server-side while the browser is offline, and write events meanwhile.
    await context.set_offline(True)
    hub = client.app[HUB].hub
    assert hub is not None and hub.client_count == 1
    for subs in list(hub._subs.values()):
        for sub in list(subs):
            sub.close()
    await page.wait_for_selector("#conn[data-state=off]", timeout=WAIT_MS)
    missed = [await _send(client, token) for _ in range(3)]
    await _call(client, token, "+14155550201")  # busy
    await asyncio.sleep(0.5)
    await context.set_offline(False)

    # It resumes from its last id: every event of the tenant's log since its first, once, in order.
    await page.wait_for_selector("#conn[data-state=live]", timeout=WAIT_MS)
    for m in missed:
        await page.wait_for_selector(f"#feed a.subject:text-is('{m['id']}')", timeout=WAIT_MS)
    expected: list[int] = []
    seen: list[int] = []
    for _ in range(100):  # until the log and the page agree (events are still arriving)
        expected = await _tenant_log(pg_pool, "acme", first_seen - 1)
        seen = await page.evaluate("window.trunklineDashboard.seenIds")
        if seen == expected:
            break
        await asyncio.sleep(0.1)
    assert seen == expected, (seen, expected)
    assert len(seen) == len(set(seen))
    assert await page.evaluate("window.trunklineDashboard.reconnects") >= 1
    # ...and what was written while it was cut came by replay: the stream that delivered it
    # was opened with a Last-Event-ID from before those events.
    first_missed = await pg_pool.fetchval(
        "SELECT min(seq) FROM events WHERE subject = ANY($1::text[])", [m["id"] for m in missed]
    )
    resumed = await page.evaluate("window.trunklineDashboard.resumedFrom")
    assert resumed and resumed[-1] < first_missed, (resumed, first_missed)
    shown = int(await page.text_content("#last-id"))
    assert shown == expected[-1]

    # A click from an id to its timeline.
    await page.click(f"#feed a.subject:text-is('{missed[0]['id']}')")
    await page.wait_for_selector("#detail-body h3:text-is('timeline')", timeout=WAIT_MS)
    await page.wait_for_selector("#detail-body td:text-is('message.accepted')", timeout=WAIT_MS)

    # The counters catch up with the log, and include what was written while it was cut.
    await page.wait_for_selector(f"#stats-as-of:text-is('{expected[-1]}')", timeout=WAIT_MS)
    assert int(await page.text_content("#mix-messages")) >= 6 * 3  # accepted…delivered, x6
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert errors == []

    # A session that ends (here: expired, by the database's clock) returns the page to the form.
    await pg_pool.execute("UPDATE dashboard_sessions SET expires_at = now() - interval '1 s'")
    await page.wait_for_selector("#login-error:has-text('session has ended')", timeout=WAIT_MS)
    assert await page.is_hidden("#app")
    await page.fill("#key", token)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#conn[data-state=live]", timeout=WAIT_MS)

    # Signing out leaves the key form and no data; the stream is refused again.
    await page.click("#signout")
    await page.wait_for_selector("#login-form", state="visible", timeout=WAIT_MS)
    assert (
        await page.evaluate(
            "fetch('/v1/events', {headers: {Accept: 'text/event-stream'}}).then(r => r.status)"
        )
        == 401
    )
    await client.post(f"/v1/calls/{held['id']}/hangup", headers=auth(token))
    await context.close()


async def test_a_tenant_key_sees_its_own_queue_depth_not_the_trunks(
    client, make_key, pg_pool, browser
):
    token = await make_key("acme")  # default scopes: no ops:read
    await make_key("globex")
    await pg_pool.execute(
        """
        INSERT INTO jobs (queue, tenant_id, payload, max_attempts, run_at)
        SELECT q, (SELECT id FROM tenants WHERE name = t), '{}', 3, now() + interval '1 hour'
        FROM (VALUES ('q-acme', 'acme'), ('q-globex', 'globex')) AS v (q, t)
        """
    )
    base = str(client.make_url("")).rstrip("/")
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    await page.goto(base + "/dashboard")
    await page.fill("#key", token)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_selector("#queue-depth h3:has-text('your jobs')", timeout=WAIT_MS)
    await page.wait_for_selector("#queues tr[data-queue='q-acme']", timeout=WAIT_MS)
    assert await page.locator("#queues tr[data-queue='q-globex']").count() == 0
    assert "needs the ops:read scope" in await page.inner_text("#breakers")
    await context.close()
