"""The dashboard tests run the real app (sandbox voice and messaging, no AMI) on real
PostgreSQL and Redis, and drive Debian's chromium with Playwright. There is no browser
download and no skip: without /usr/bin/chromium the browser test fails with the fix."""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.calls.conftest import call_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture
def settings(database_url, redis_url):
    return call_settings(
        database_url,
        redis_url,
        ami_port=None,
        events={"sse_retry_ms": 300, "hub_resync_interval": 0.2},
        providers={"sandbox": {"receipt_delay": 0.05}},
    )


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the dashboard test needs Debian's chromium at {CHROMIUM}, which is missing: "
            "run `apt-get install -y chromium` (no browser is downloaded; .ci/run installs it)",
            pytrace=False,
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "Playwright for Python is missing: `.venv/bin/pip install -e '.[dev]'` "
            "(never `playwright install`: the test uses /usr/bin/chromium)",
            pytrace=False,
        )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
