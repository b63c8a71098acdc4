"""The SSRF guard on the forms that carry an IPv4 address inside IPv6, and on numeric hosts that
mean one address to one parser and another (or nothing) to the next."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.webhooks import ssrf
from tests.helpers import auth

PUBLIC = "https://93.184.215.14/hook"

# (address, allowed, why)
ADDRESSES = [
    ("64:ff9b::7f00:1", False, "NAT64 well-known prefix → 127.0.0.1"),
    ("64:ff9b::a00:1", False, "NAT64 → 10.0.0.1"),
    ("64:ff9b::a9fe:a9fe", False, "NAT64 → 169.254.169.254 (cloud metadata)"),
    ("64:ff9b::5db8:d70e", True, "NAT64 → 93.184.215.14 (DNS64 of a public host)"),
    ("64:ff9b:1::7f00:1", False, "local-use NAT64 prefix"),
    ("64:ff9b:1:5db8:d7:e00::", False, "local-use NAT64 prefix, even with a public IPv4"),
    ("2002:7f00:1::1", False, "6to4 → 127.0.0.1"),
    ("2002:c0a8:1::1", False, "6to4 → 192.168.0.1"),
    ("2002:a9fe:a9fe::", False, "6to4 → 169.254.169.254"),
    ("2002:5db8:d70e::1", True, "6to4 of a public IPv4"),
    ("::7f00:1", False, "IPv4-compatible ::127.0.0.1"),
    ("::a00:1", False, "IPv4-compatible ::10.0.0.1"),
    ("::5db8:d70e", False, "IPv4-compatible is deprecated: refused whole"),
    ("::ffff:7f00:1", False, "IPv4-mapped ::ffff:127.0.0.1"),
    ("::ffff:a9fe:a9fe", False, "IPv4-mapped metadata address"),
    ("::ffff:5db8:d70e", True, "IPv4-mapped public address"),
    ("::ffff:0:7f00:1", False, "IPv4-translated ::ffff:0:127.0.0.1"),
    ("::ffff:0:a00:1", False, "IPv4-translated ::ffff:0:10.0.0.1"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False, "Teredo"),
    ("2606:4700:4700::1111", True, "plain global IPv6"),
    ("93.184.215.14", True, "plain public IPv4"),
]


@pytest.mark.parametrize(("address", "allowed", "why"), ADDRESSES, ids=[a for a, *_ in ADDRESSES])
def test_embedded_ipv4_is_judged_by_what_it_embeds(address: str, allowed: bool, why: str) -> None:
    assert ssrf.address_allowed(ipaddress.ip_address(address)) is allowed, why


NON_CANONICAL = [
    "2130706433",  # 127.0.0.1 as one number
    "127.1",  # short form
    "127.0.1",
    "0x7f.0.0.1",  # hex
    "0x7f000001",
    "0177.0.0.1",  # octal
    "017700000001",
    "127.000.000.001",  # leading zeros: octal to inet_aton
    "127.0.0.1.",  # trailing dot
    "10.1",
    "0",
]


@pytest.mark.parametrize("host", NON_CANONICAL)
def test_numeric_hosts_not_in_a_b_c_d_form_are_refused_in_every_mode(host: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(ssrf.TargetRefused, match=r"a\.b\.c\.d"):
            ssrf.check_literal_host(f"http://{host}:9/hook", allow_private=allow_private)
    # and a name that merely starts with digits is still a name
    assert ssrf._literal("1password.example") is None
    assert ssrf._literal("8.8.8.8") == ipaddress.ip_address("8.8.8.8")


REFUSED_AT_CREATION = [f"http://{h}/hook" for h in NON_CANONICAL] + [
    f"http://[{a}]/hook" for a, allowed, _ in ADDRESSES if not allowed and ":" in a
]


async def test_creation_refuses_every_form(app_client, make_key):
    client = await app_client(webhooks={"allow_private_targets": False})
    token = await make_key("acme")
    for url in REFUSED_AT_CREATION:
        resp = await client.post("/v1/webhook-endpoints", json={"url": url}, headers=auth(token))
        assert resp.status == 422, (url, await resp.text())
        assert (await resp.json())["code"] == "webhook_url_refused", url
    for url in (PUBLIC, "http://[64:ff9b::5db8:d70e]/hook", "http://[2002:5db8:d70e::1]/hook"):
        resp = await client.post("/v1/webhook-endpoints", json={"url": url}, headers=auth(token))
        assert resp.status == 201, (url, await resp.text())


async def test_creation_refuses_non_canonical_numbers_even_when_private_targets_are_allowed(
    app_client, make_key
):
    """aiohttp refuses to connect to them, so such an endpoint could never be delivered to."""
    client = await app_client(webhooks={"allow_private_targets": True})
    token = await make_key("acme")
    for host in ("2130706433", "127.1"):
        url = f"http://{host}:9/hook"
        resp = await client.post("/v1/webhook-endpoints", json={"url": url}, headers=auth(token))
        assert resp.status == 422, (url, await resp.text())
    resp = await client.post(
        "/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook"}, headers=auth(token)
    )
    assert resp.status == 201


async def test_delivery_refuses_every_form_for_good_instead_of_retrying(pg_pool):
    """At delivery the literal check must agree with what the connector would connect to: a
    refused target stops (not retryable), it is never a connection error retried for 24 h."""
    from gateway.settings import WebhookSettings
    from gateway.webhooks.deliver import Deliverer, http_session

    cfg = WebhookSettings(allow_private_targets=False, timeout=2)
    hosts = ["2130706433", "127.1", "0x7f.0.0.1", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]"]
    hosts += ["[::127.0.0.1]", "[::ffff:0:7f00:1]", "[64:ff9b:1::7f00:1]"]
    async with http_session(cfg) as session:
        deliverer = Deliverer(pg_pool, cfg, session)
        for host in hosts:
            row = {
                "id": "d",
                "url": f"http://{host}:9/hook",
                "secret": "s",
                "payload": {},
                "event_seq": 1,
                "event_type": "message.sent",
                "trace_id": None,
            }
            outcome = await deliverer.attempt(row, 1)
            assert not outcome.retryable, (host, outcome.error)
            assert "refused target" in outcome.error, (host, outcome.error)
