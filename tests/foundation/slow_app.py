"""The real daemon plus one slow route, run as a process by the shutdown test."""

import asyncio
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.daemon import serve
from gateway.logs import configure_logging
from gateway.settings import load_settings


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "2")))
    return web.json_response({"finished": True})


async def main() -> None:
    settings = load_settings()
    configure_logging("info", "json")
    app = create_app(settings, role="all")
    app.router.add_get("/test/slow", slow)
    await serve(settings, "all", app=app)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
