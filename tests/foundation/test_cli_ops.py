"""The operator's CLI against a running daemon: status, tail, dlq, keys list, tenants list;
and `trunkline dev` beside them: the CLI finds its private servers, and its key is kept."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.devservices import short_runtime_dir
from tests.helpers import auth, free_port, trunkline, wait_ready


async def cli(*args: str, env: dict[str, str], cwd: str | None = None, timeout: float = 60):
    """`trunkline …` in a subprocess, as an operator runs it; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def daemon(daemon_env, make_key) -> AsyncIterator[tuple[str, str, dict[str, str]]]:
    """`trunkline run` in its own process; (base URL, a key of tenant acme, its env)."""
    token = await make_key("acme")
    env = daemon_env | {
        "TRUNKLINE_GUARDRAILS__POLICY__EXEMPT_TRANSACTIONAL_FROM_CALLING_HOURS": "true"
    }
    base = f"http://127.0.0.1:{env['TRUNKLINE_HTTP__PORT']}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_ready(base)
        yield base, token, env
    finally:
        proc.terminate()
        await proc.wait()


async def test_status_shows_readiness_pools_queues_dead_letters_breakers_and_the_log(
    daemon, pg_pool
):
    base, _, env = daemon
    code, out, err = await cli("status", env=env)
    assert code == 0, err
    assert f"ready at {base}" in out
    assert re.search(r"pools\s+campaign 0/60\s+ivr 0/15\s+api 0/8", out), out
    assert re.search(r"dead\s+0\n", out), out
    assert "breakers    sandbox closed" in out
    assert re.search(r"event log\s+head \d+", out)
    assert "streams     0 SSE clients on the local daemon" in out
    # work queued for later, a dead letter and an open breaker show at once
    await pg_pool.execute(
        "INSERT INTO jobs (queue, payload, max_attempts, run_at) "
        "VALUES ('later', '{}', 3, now() + interval '1 hour')"
    )
    await pg_pool.execute(
        "INSERT INTO jobs (queue, tenant_id, payload, state, max_attempts, attempts, dead_at) "
        "SELECT 'dispatch', id, '{}', 'dead', 1, 1, now() FROM tenants WHERE name = 'acme'"
    )
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(env["TRUNKLINE_REDIS__URL"])
    await r.hset("tl:breaker:{sandbox}:state", mapping={"state": "open", "opened_at": "1"})
    await r.aclose()
    code, out, err = await cli("status", env=env)
    assert code == 0, err
    assert "later 0 due/1 later/0 running" in out
    assert re.search(r"dead\s+1 \(dispatch 1; trunkline dlq list\)", out), out
    assert "sandbox open" in out
    code, out, _ = await cli("status", "--json", env=env)
    figures = json.loads(out)
    assert {q["queue"]: q["dead"] for q in figures["queues"]}["dispatch"] == 1
    assert figures["event_log"]["head"] >= 0


async def test_tail_follows_the_log_with_type_and_tenant_filters(daemon, make_key):
    base, token, env = daemon
    other = await make_key("globex")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "tail",
        "--types",
        "message.*",
        "--tenant",
        "acme",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # it starts at the head, only what happens from now on: wait until it says where
        started = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert started.startswith(b"following the event log after id "), started
        async with aiohttp.ClientSession() as http:
            ids = []
            for key in (token, other):
                async with http.post(
                    f"{base}/v1/messages",
                    json={"to": "+14155550100", "body": "hi", "purpose": "transactional"},
                    headers=auth(key),
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    ids.append((await resp.json())["id"])
        seen: list[dict] = []
        deadline = time.monotonic() + 20
        while not any(e["type"] == "message.delivered" for e in seen):
            assert time.monotonic() < deadline, seen
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
            assert line, (await proc.stderr.read()).decode()
            seen.append(json.loads(line))
        assert {e["tenant"] for e in seen} == {"acme"}
        assert {e["subject"] for e in seen} == {ids[0]}
        assert all(e["type"].startswith("message.") for e in seen)
        assert [e["id"] for e in seen] == sorted(e["id"] for e in seen)  # seq order
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)


async def test_dlq_list_and_replay_keys_and_tenants(daemon, pg_pool):
    _, token, env = daemon
    job_id = await pg_pool.fetchval(
        "INSERT INTO jobs (queue, tenant_id, payload, state, max_attempts, attempts, last_error, "
        "dead_at) SELECT 'list-test', id, '{\"n\": 1}', 'dead', 2, 2, 'upstream 503', now() "
        "FROM tenants WHERE name = 'acme' RETURNING id"
    )
    code, out, err = await cli("dlq", "list", env=env)
    assert code == 0, err
    assert re.search(rf"\b{job_id}\s+list-test\s+acme\s+attempts 2/2", out), out
    assert "upstream 503" in out
    code, out, err = await cli("dlq", "replay", str(job_id), env=env)
    assert code == 0 and f"replayed {job_id}" in out, err
    assert await pg_pool.fetchval("SELECT state FROM jobs WHERE id = $1", job_id) == "ready"
    code, out, err = await cli("dlq", "replay", str(job_id), env=env)
    assert code == 1 and "no dead letter" in err
    key_id = token.split("_")[1]
    code, out, err = await cli("keys", "list", "--tenant", "acme", env=env)
    assert code == 0 and key_id in out and "active" in out, err
    assert token.rsplit("_", 1)[1] not in out  # never the secret
    code, out, err = await cli("tenants", "list", env=env)
    assert code == 0 and re.search(r"acme\s+\S+\s+1 active keys", out), (out, err)


async def test_an_unreachable_database_is_named_with_the_fix(daemon_env):
    env = daemon_env | {"TRUNKLINE_DATABASE__URL": f"postgresql://x@127.0.0.1:{free_port()}/x"}
    for args in (("status",), ("dlq", "list"), ("keys", "list"), ("tenants", "list")):
        code, out, err = await cli(*args, env=env)
        assert code == 1, (args, out, err)
        assert "cannot reach PostgreSQL at postgresql://x@127.0.0.1" in err, err
        assert "TRUNKLINE_DATABASE__URL" in err and "Traceback" not in err
    env = {k: v for k, v in daemon_env.items() if k != "TRUNKLINE_DATABASE__URL"}
    code, _, err = await cli("status", env=env, cwd=str(short_runtime_dir("tl-nodb-")))
    assert code == 1 and "no PostgreSQL configured: run `make run`" in err


async def _start_dev(env: dict[str, str], cwd: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "dev",
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    printed = ""
    deadline = time.monotonic() + 90
    while "tk_" not in printed:
        assert time.monotonic() < deadline, printed
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        assert line, f"trunkline dev exited: {printed}"
        printed += line.decode()
    await wait_ready(f"http://127.0.0.1:{env['TRUNKLINE_HTTP__PORT']}", timeout=60)
    return proc, re.search(r"tk_[A-Za-z0-9_-]+", printed).group(0)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_dev_keeps_one_key_and_the_cli_beside_it_finds_its_servers():
    """Two `make run`s print the same key; a revoked one is replaced; every command run in the
    same directory reaches the private PostgreSQL and Redis with no URL set."""
    cwd = str(short_runtime_dir("tl-dev-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    env |= {"TRUNKLINE_HTTP__PORT": str(free_port()), "TRUNKLINE_LOG__FORMAT": "json"}
    try:
        proc, first = await _start_dev(env, cwd)
        try:
            assert os.stat(f"{cwd}/.trunkline/dev-key").st_mode & 0o077 == 0
            code, out, err = await cli("status", env=env, cwd=cwd)
            assert code == 0 and "ready at http://127.0.0.1" in out, (out, err)
            code, out, err = await cli("keys", "list", env=env, cwd=cwd)
            assert code == 0 and out.count("tk_") == 0 and first.split("_")[1] in out, err
        finally:
            await _stop(proc)
        services = pathlib.Path(cwd, ".trunkline", "services.json")
        assert not await asyncio.to_thread(services.exists)  # the servers are gone with it
        code, _, err = await cli("status", env=env, cwd=cwd)
        assert code == 1 and "no PostgreSQL configured" in err

        proc, second = await _start_dev(env, cwd)
        try:
            assert second == first
            code, out, _ = await cli("keys", "list", env=env, cwd=cwd)
            assert len(out.strip().splitlines()) == 1, out  # one key, not one per run
            code, _, err = await cli("keys", "revoke", first.split("_")[1], env=env, cwd=cwd)
            assert code == 0, err
        finally:
            await _stop(proc)
        proc, third = await _start_dev(env, cwd)
        try:
            assert third != first  # the revoked key was replaced, and the new one works
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{env['TRUNKLINE_HTTP__PORT']}/v1/whoami"
                async with http.get(url, headers=auth(third)) as resp:
                    assert resp.status == 200
        finally:
            await _stop(proc)
    finally:
        await asyncio.to_thread(shutil.rmtree, cwd, True)


def test_cli_help_lists_the_operator_commands():
    result = trunkline("--help", env=dict(os.environ))
    for command in ("status", "tail", "dlq", "keys", "tenants"):
        assert command in result.stdout
