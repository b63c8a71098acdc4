"""`guardrails.checks` cannot drop DNC, calling hours or any other check from a production
chain: `trunkline run` refuses to start (config error naming the key, exit code 2); only
`trunkline dev` runs a reduced chain. Tests build focused chains in-process (make_chain), which
no configuration can reach."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from gateway.app import create_app
from gateway.settings import ConfigError
from tests.guardrails.conftest import merged
from tests.helpers import trunkline, wait_ready

REDUCED = [
    ["content", "rate_limits", "calling_hours"],  # no DNC
    ["suppression", "content", "rate_limits"],  # no calling hours
    ["suppression", "calling_hours"],
]


@pytest.mark.parametrize("checks", REDUCED, ids=["no-dnc", "no-calling-hours", "two"])
def test_run_refuses_a_reduced_chain_with_exit_2_naming_the_key(daemon_env, checks):
    env = daemon_env | {"TRUNKLINE_GUARDRAILS__CHECKS": json.dumps(checks)}
    try:
        proc = trunkline("run", "--role", "all", env=env, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("trunkline run started with a reduced guardrail chain")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: guardrails.checks (TRUNKLINE_GUARDRAILS__CHECKS)")
    assert "trunkline dev" in lines[0]
    assert "Traceback" not in proc.stderr


def test_the_app_factory_refuses_a_reduced_chain_unless_told_it_is_dev(settings):
    cfg = merged(settings, guardrails={"checks": ["suppression", "content", "rate_limits"]})
    with pytest.raises(ConfigError) as refused:
        create_app(cfg, role="api")
    assert refused.value.key == "guardrails.checks"
    create_app(cfg, role="api", allow_reduced_chain=True)  # what `trunkline dev` does
    create_app(settings, role="api")  # the full chain needs nothing


async def test_dev_runs_a_reduced_chain(daemon_env):
    env = daemon_env | {"TRUNKLINE_GUARDRAILS__CHECKS": json.dumps(REDUCED[1])}
    port = env["TRUNKLINE_HTTP__PORT"]
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway.cli", "dev", "--role", "api"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
    err = (await proc.stderr.read()).decode()
    assert "guardrail checks disabled by configuration" in err
    assert "calling_hours" in err
