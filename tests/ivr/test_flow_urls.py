"""A webhook node's URL is held to the customer-webhook SSRF guard at upload (and again on every
request): with the default settings a flow cannot point it into our own network."""

from __future__ import annotations

import pytest

from tests.ivr.conftest import main_menu


@pytest.fixture
def settings(database_url, redis_url):
    from gateway.settings import load_settings

    return load_settings(  # webhooks.allow_private_targets: false, the default
        database={"url": database_url, "min_size": 1, "max_size": 10},
        redis={"url": redis_url},
        http={"port": 0, "shutdown_timeout": 5},
    )


async def test_a_webhook_node_to_a_private_address_is_refused_naming_the_node(ivr):
    for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest", "http://10.1.2.3/"):
        flow = main_menu()
        flow["nodes"]["billing"]["webhook"]["url"] = url
        problem = await ivr.upload(flow, expect=422)
        assert problem["code"] == "webhook_url_refused" and problem["node"] == "billing", problem
        assert "node 'billing'" in problem["detail"]
    assert (await ivr.upload(main_menu()))["version"] == 1  # acme.example: public (unresolved)
