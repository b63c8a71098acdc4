"""The floor for bench/http.py: a bare aiohttp handler returning the same body as /v1/whoami."""

import sys

from aiohttp import web

BODY = sys.argv[2].encode()


async def handler(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


app = web.Application()
app.router.add_get("/v1/whoami", handler)
app.router.add_get("/readyz", ready)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
