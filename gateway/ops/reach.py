"""How the operator's commands reach PostgreSQL and Redis, and what they say when they cannot.

Next to a `make run` the URLs come from ``.trunkline/services.json`` (gateway/devstate.py)
unless TRUNKLINE_*__URL are set; an unreachable server is an error that names it and the fix,
worded for where its URL came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from gateway import db, devstate
from gateway.settings import Settings, _mask_password

T = TypeVar("T")
_DEV_TAKEN: dict[str, str] = {}  # the URLs use_dev_services took from services.json


class Unreachable(RuntimeError):
    """A server the command needs does not answer; the message names it and the fix."""


def fix(settings: Settings, what: str, env: str) -> str:
    """How to point the CLI at `what`, worded for where its URL came from."""
    if what in _DEV_TAKEN:
        return (
            f"the private {'PostgreSQL' if what == 'database' else 'Redis'} that `make run` "
            f"(trunkline dev) started is not running: start `make run` in "
            f"{settings.dev.data_dir.resolve().parent}, or set {env}"
        )
    return f"check that it is running and that {env} (or the config file) points at it"


def database_url(settings: Settings) -> str:
    if settings.database.url is None:
        raise Unreachable(
            "no PostgreSQL configured: run `make run` (trunkline dev) in this directory — it "
            "starts a private PostgreSQL and writes its URL to "
            f"{settings.dev.data_dir / devstate.SERVICES}, which this command reads — or set "
            "TRUNKLINE_DATABASE__URL=postgresql://…"
        )
    return settings.database_url()


def redis_url(settings: Settings) -> str:
    if settings.redis.url is None:
        raise Unreachable(
            "no Redis configured: run `make run` (trunkline dev) in this directory, or set "
            "TRUNKLINE_REDIS__URL=redis://…"
        )
    return settings.redis_url()


async def open_pool(settings: Settings) -> asyncpg.Pool:
    url = database_url(settings)
    try:
        return await asyncio.wait_for(db.create_pool(url, min_size=1, max_size=2), 10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unreachable(
            f"cannot reach PostgreSQL at {_mask_password(url)} ({exc or type(exc).__name__}): "
            + fix(settings, "database", "TRUNKLINE_DATABASE__URL")
        ) from None


async def with_pool(
    settings: Settings, work: Callable[[asyncpg.Pool], Coroutine[Any, Any, T]]
) -> T:
    """Run `work` with a small pool on the configured PostgreSQL, closed after it."""
    pool = await open_pool(settings)
    try:
        return await work(pool)
    finally:
        await pool.close()


def run(settings: Settings, work: Callable[[asyncpg.Pool], Coroutine[Any, Any, T]]) -> T:
    """A command's one way to PostgreSQL: `work` with a pool, in a loop of its own."""
    return asyncio.run(with_pool(settings, work))


def use_dev_services(settings: Settings) -> None:
    """Take the URLs a `make run` beside us wrote, remembering which (for error messages)."""
    _DEV_TAKEN.clear()
    _DEV_TAKEN.update(devstate.use_dev_services(settings))
