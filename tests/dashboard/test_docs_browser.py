"""/docs in a real headless browser (Debian's chromium, driven by Playwright): the vendored
Swagger UI loads from the daemon alone, renders /openapi.json, and an operation opened shows
its parameters, the scope it needs and its example. Saves tests/artifacts/docs.png."""

from __future__ import annotations

from tests.dashboard.conftest import ARTIFACTS

WAIT_MS = 15_000  # generous: the machine is shared


async def test_docs_render_an_operation_with_its_parameters_and_example(client, browser):
    base = str(client.make_url("")).rstrip("/")
    context = await browser.new_context(viewport={"width": 1280, "height": 1400})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
    elsewhere: list[str] = []
    page.on("request", lambda r: r.url.startswith(base) or elsewhere.append(r.url))

    await page.goto(base + "/docs")
    listing = page.locator("#operations-messages-get_v1_messages")
    await listing.wait_for(timeout=WAIT_MS)
    await listing.locator(".opblock-summary").first.click()
    for name in ("status", "to", "created_after", "cursor", "limit"):
        await listing.locator(f"tr[data-param-name='{name}']").wait_for(timeout=WAIT_MS)
    text = await listing.inner_text()
    assert "messages:read" in text and "curl" in text, text[:2000]
    limit = await listing.locator("tr[data-param-name='limit']").inner_text()
    assert "integer" in limit and "50" in limit, limit  # its type and default
    status = await listing.locator("tr[data-param-name='status']").inner_text()
    assert "delivered" in status and "undelivered" in status, status  # the enum

    send = page.locator("#operations-messages-post_v1_messages")
    await send.locator(".opblock-summary").first.click()
    await send.locator(".body-param__example, .microlight").first.wait_for(timeout=WAIT_MS)
    sent = await send.inner_text()
    assert "+14155550100" in sent and "messages:write" in sent and "201" in sent, sent[:2000]

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=False)
    assert problems == [], problems
    assert elsewhere == [], f"/docs loaded something from elsewhere: {elsewhere}"
    await context.close()
