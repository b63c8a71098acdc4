"""The operator sets each tenant's Stripe customer with the CLI (never the tenant's own key)."""

from __future__ import annotations

import asyncio
import subprocess

from gateway import cli as cli_module


async def test_stripe_customer_set_changed_and_cleared_from_the_cli(
    daemon_env, pg_pool, monkeypatch, capsys
):
    """The CLI's own main() with the daemon's environment, in a thread (a subprocess per
    command costs seconds; test_cli_ops runs the real process)."""
    for name, value in daemon_env.items():
        if name.startswith("TRUNKLINE_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli_module, "configure_logging", lambda *a: None)  # the suite's stays

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        code = await asyncio.to_thread(cli_module.main, list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    made = await cli("tenants", "create", "acme", "--stripe-customer", "cus_Nffr1")
    assert made.returncode == 0, made.stderr
    assert "billed to Stripe customer cus_Nffr1" in made.stdout
    customer = "SELECT stripe_customer_id FROM tenants WHERE name = 'acme'"
    assert await pg_pool.fetchval(customer) == "cus_Nffr1"

    changed = await cli("tenants", "update", "acme", "--stripe-customer", "cus_Other2")
    assert changed.returncode == 0, changed.stderr
    assert await pg_pool.fetchval(customer) == "cus_Other2"
    listed = await cli("tenants", "list")
    assert "stripe cus_Other2" in listed.stdout

    bad = await cli("tenants", "update", "acme", "--stripe-customer", "acct_123")
    assert bad.returncode == 1 and "not a Stripe customer id" in bad.stderr
    missing = await cli("tenants", "update", "nobody", "--stripe-customer", "cus_1")
    assert missing.returncode == 1 and "no tenant named 'nobody'" in missing.stderr
    bare = await cli("tenants", "update", "acme")
    assert bare.returncode == 2 and "nothing to change" in bare.stderr
    assert await pg_pool.fetchval(customer) == "cus_Other2"

    cleared = await cli("tenants", "update", "acme", "--no-stripe-customer")
    assert cleared.returncode == 0, cleared.stderr
    assert "no longer exported" in cleared.stdout
    assert await pg_pool.fetchval(customer) is None
    # A bad id at creation creates nothing (one transaction).
    refused = await cli("tenants", "create", "globex", "--stripe-customer", "nope")
    assert refused.returncode == 1
    assert await pg_pool.fetchval("SELECT count(*) FROM tenants WHERE name = 'globex'") == 0


async def test_status_shows_the_export_backlog(daemon_env, pg_pool, monkeypatch, capsys):
    for name, value in daemon_env.items():
        if name.startswith("TRUNKLINE_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli_module, "configure_logging", lambda *a: None)

    async def status() -> str:
        code = await asyncio.to_thread(cli_module.main, ["status"])
        out = capsys.readouterr().out
        assert code == 0, out
        return next(line for line in out.splitlines() if line.startswith("stripe"))

    assert "export off" in await status()
    monkeypatch.setenv("TRUNKLINE_BILLING__STRIPE__API_KEY", "sk_test_x")
    assert await status() == "stripe      0 batches waiting, last sent never"
    await pg_pool.execute(
        "INSERT INTO billing_export_batches (records, events, attempts, last_error) "
        "VALUES (10, 3, 4, 'APIConnectionError (no response, code None): refused')"
    )
    line = await status()
    assert line.startswith("stripe      1 batches waiting, last sent never, 4 failed sends")
    assert line.endswith("last error: APIConnectionError (no response, code None): refused")


def test_the_cli_does_not_import_the_stripe_sdk_while_the_export_is_off():
    """The SDK takes about a second to import; every `trunkline` command loads the app."""
    import sys

    probe = "import sys, gateway.cli, gateway.app; print('stripe' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
