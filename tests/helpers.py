"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp

T = TypeVar("T")

# Transactional sends exempt from calling hours, for tests that run at whatever hour CI does
# and are not about calling hours (those inject a clock: tests/guardrails).
EXEMPT_TRANSACTIONAL = {"policy": {"exempt_transactional_from_calling_hours": True}}


def with_database(url: str, name: str) -> str:
    """The same server URL with another database name (keeps ?host= for Unix sockets)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trunkline(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def wait_ready(base_url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base_url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{base_url} not ready within {timeout}s")


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
