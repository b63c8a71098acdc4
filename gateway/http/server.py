"""Requests that fail below the handlers: refused by aiohttp's parser, or left by their client.

**Refused.** aiohttp's parser rejects some requests itself — a header or request line over
8190 bytes, CR or LF inside a header, a request that is not HTTP — and answers them from
``RequestHandler.handle_error`` with a ``text/plain`` 400, logging a traceback at ERROR. No
middleware, signal or app option reaches that answer (aiohttp issue #3287); ``handler_args``
can only swap the logger. So the runner builds its connections with a ``RequestHandler``
subclass whose ``handle_error`` — the method aiohttp calls for exactly this — answers
problem+json with a stable code and logs one quiet line (that includes a body whose chunked
framing is broken: the parser finds it too). Everything else is aiohttp's.

**Left.** A client that hangs up while its body is being read makes ``request.read()`` raise
``ConnectionResetError``; nobody is there to answer, so ``client_gone_middleware`` (inside the
context middleware) turns it into a 499 "client closed request" (nginx's convention), which the
access line records as the one line about it — not an error with a traceback.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.core.errors import Problem
from gateway.logs import get_logger

log = get_logger("gateway.http")


def parse_problem(exc: BaseException | None) -> Problem:
    """The answer to a request aiohttp's parser refused: fixed words, never the client's bytes."""
    if isinstance(exc, LineTooLong):
        return Problem(
            "The request line or a header is longer than the server accepts (8190 bytes)",
            status=400,
            code="line_too_long",
            title="Request line or header too long",
        )
    return Problem(
        "The request is not valid HTTP/1.1 (e.g. CR or LF inside a header)",
        status=400,
        code="malformed_request",
        title="Malformed request",
    )


class ProblemRequestHandler(RequestHandler):
    """aiohttp's protocol for one connection, answering its own parse errors in problem+json."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        problem = parse_problem(exc)
        # TLS or other non-HTTP traffic on the port is routine noise on the internet
        level = log.debug if isinstance(exc, BadHttpMethod) else log.info
        level(
            "bad http request",
            code=problem.code,
            peer=request.remote,
            error=type(exc).__name__,
        )
        if request.writer.output_size > 0:  # as aiohttp: too late for any answer
            raise ConnectionError("response already started; cannot answer the parse error")
        response = web.json_response(
            problem.body(), status=problem.status, content_type="application/problem+json"
        )
        response.force_close()
        return response


class _Server(web.Server):
    """aiohttp's low-level server, making a ProblemRequestHandler per connection."""

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parse errors in problem+json."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # the app's own Server: startup ran, app frozen
        server.__class__ = _Server  # same state, our protocol factory (see the module note)
        return server


CLIENT_CLOSED_REQUEST = 499


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def client_gone_middleware(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    """A client that left mid-request gets a 499 nobody reads, logged by the access line only."""
    try:
        return await handler(request)
    except ConnectionError:
        if client_gone(request):
            return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")
        raise
