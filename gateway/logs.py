"""structlog configuration: JSON lines off a TTY, readable console on one.

Request, trace and tenant ids live in contextvars (`bind`), so every log line
written while handling a request carries them without being passed by hand.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, merge_contextvars

from gateway.core import jsonio

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if use_console
        # every request writes its access line: orjson (jsonio), not the json module (~4x)
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    structlog.configure(
        processors=[
            merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (asyncpg, aiohttp, panoramisk) go to stderr at WARNING.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiohttp.access").disabled = True  # we write our own access line


def _dumps(event: dict[str, Any], **_kw: Any) -> str:
    return jsonio.dumps_str(event)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


bind = bind_contextvars
clear = clear_contextvars

__all__ = ["bind", "clear", "configure_logging", "get_logger"]
