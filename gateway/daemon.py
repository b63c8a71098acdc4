"""The daemon's life: its event loop, serving until a signal, then draining.

Used by `trunkline run` and `trunkline dev` (gateway/cli.py, gateway/devcli.py)."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from gateway.app import Role, create_app
from gateway.http.server import AppRunner
from gateway.logs import get_logger
from gateway.settings import Settings

log = get_logger("trunkline")


async def serve(
    settings: Settings, role: Role, app: web.Application | None = None, *, dev: bool = False
) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop accepting, finish in-flight work, close.

    `dev` (only `trunkline dev`) lets `guardrails.checks` leave checks out."""
    app = app if app is not None else create_app(settings, role=role, allow_reduced_chain=dev)
    runner = AppRunner(
        app, handle_signals=False, shutdown_timeout=settings.http.shutdown_timeout, access_log=None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    try:
        if role != "worker":
            site = web.TCPSite(
                runner, settings.http.host, settings.http.port, reuse_port=settings.http.reuse_port
            )
            await site.start()
            log.info("listening", url=site.name, role=role)
        else:
            log.info("worker started", role=role)
        settle_heap()
        await stop.wait()
        log.info("shutting down", deadline_s=settings.http.shutdown_timeout)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def settle_heap() -> None:
    """Keep the cyclic garbage collector off what start-up built (settings, the OpenAPI
    document, pydantic schemas, phone number metadata): frozen, it is never traversed again.

    Measured under bench.accept, the collector took ~11 % of the API process's CPU (perf),
    mostly full collections walking those start-up objects over and over; a request allocates
    many short-lived objects (futures, dicts) that trigger collections, and those are cheap
    only if the old heap is out of the way. The young generation's threshold is raised for the
    same reason: most objects of a request die by reference counting before any collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def run_daemon(main: Coroutine[Any, Any, Any]) -> Any:
    """Run the daemon's event loop: uvloop when installed (a faster loop: its transports,
    DNS and timers are libuv's), asyncio's own otherwise. Only `run` and `dev`: the short
    operator commands gain nothing from it."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a platform without uvloop wheels
        return asyncio.run(main)
    return uvloop.run(main)
