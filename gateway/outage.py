"""Our own outage, told apart from a bug and said once (principle 11).

When PostgreSQL or Redis is unreachable the gateway is not broken, it is waiting:
clients get `503` with `Retry-After` (not a 500 and a traceback per request), jobs
wait without spending their provider retry budget, and the operator reads one log
line when a dependency goes away and one when it is back, however many requests
and jobs met the outage in between.

`unavailable(exc)` decides which dependency, if any, an exception says is
unreachable. It is deliberately narrow: connection refused/reset/lost, a server
starting up or shutting down, a pool that cannot hand out a connection in time, a
server out of connection slots, a Redis still loading its data. Everything else —
a constraint violation, a syntax error, a misused connection ("another operation
is in progress", "released back to the pool"), a Lua error — is a bug and stays a
500 with its traceback, so an outage can never hide one.

`OutageMonitor` is the per-process memory of what is down. The first failure is
confirmed by a probe at once — a connection lost to a server that is up again (a
LISTEN connection noticed dead after a restart that is over) is no outage to
report — then "<dependency> unavailable" is logged and the probe repeats until a
trivial command succeeds: "<dependency> available again", and whoever waits for
it is woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal

import asyncpg
from redis import exceptions as redis_errors

from gateway.core.errors import Problem
from gateway.logs import get_logger
from gateway.stopping import cancel_and_wait

log = get_logger(__name__)

Dependency = Literal["database", "redis"]
Probe = Callable[[], Awaitable[object]]
DEPENDENCIES: tuple[Dependency, ...] = ("database", "redis")

# asyncpg: the server is gone, going, not yet there, or has no slot for us.
_PG_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08, incl. ConnectionDoesNotExist
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up / shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01: terminated by a shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
)
# asyncpg's InterfaceError is mostly misuse (a bug); only these texts mean a dead connection.
_PG_CLOSED_TEXT = ("connection is closed", "connection was closed", "pool is closing")
# An idle pooled connection that received the server's FATAL (57P01 at a shutdown) sits in
# asyncpg's ERROR_CONSUME state (2) until the socket closes; a query started on it in that
# instant fails with "cannot switch to state N; another operation (2) is in progress". That is
# the shutdown reaching us, not two operations on one connection: those fail with
# InterfaceError "another operation is in progress", a bug, which stays a 500.
_PG_DYING = "another operation (2) is in progress"
# redis-py: ConnectionError covers refused/reset/lost, the blocking pool's wait and
# BusyLoadingError; credentials refused are a configuration error, not an outage.
_REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
)
_REDIS_NOT_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
)
# Our own Redis client code (the guardrails' pipelined connection, the pools' transport).
_REDIS_MODULES = ("redis", "guardrails.resp", "sip.pools._transport")


class DependencyUnavailable(Problem):
    """503 `database_unavailable` / `redis_unavailable`, with `Retry-After`."""

    status, title = 503, "Service temporarily unavailable"

    def __init__(self, dependency: Dependency, retry_after: int) -> None:
        name = "PostgreSQL" if dependency == "database" else "Redis"
        super().__init__(
            f"{name} is unreachable; retry after {retry_after} s (the same Idempotency-Key is safe)",
            code=f"{dependency}_unavailable",
            headers={"Retry-After": str(retry_after)},
        )
        self.dependency: Dependency = dependency


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it explicitly wraps (`raise … from`), cycle-safe.

    Only `__cause__` is followed: an error raised *while handling* an outage (implicit
    `__context__`) is a bug of its own and must not pass for the outage.
    """
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 16 and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__
    return seen


def _raised_under(tb: TracebackType | None) -> Dependency | None:
    """The dependency whose client code is the innermost library on the traceback."""
    found: Dependency | None = None
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module == "asyncpg" or module.startswith("asyncpg."):
            found = "database"
        elif any(module == m or module.startswith(m + ".") for m in _REDIS_MODULES):
            found = "redis"
        tb = tb.tb_next
    return found


def _classify_one(exc: BaseException) -> Dependency | None:
    if isinstance(exc, DependencyUnavailable):
        return exc.dependency
    if isinstance(exc, _PG_DOWN):
        return "database"
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        text = str(exc)
        return "database" if any(t in text for t in _PG_CLOSED_TEXT) else None
    if isinstance(exc, asyncpg.exceptions.InternalClientError) and _PG_DYING in str(exc):
        return "database"
    if isinstance(exc, _REDIS_DOWN) and not isinstance(exc, _REDIS_NOT_DOWN):
        return "redis"
    if isinstance(exc, OSError):
        # Refused, reset, broken pipe, a missing Unix socket, a connect or acquire timeout
        # (TimeoutError is an OSError): an outage when it surfaced from a database or Redis
        # client, not from anything else.
        return _raised_under(exc.__traceback__)
    return None


def unavailable(exc: BaseException) -> Dependency | None:
    """Which dependency `exc` says is unreachable; None when it is anything else (a bug)."""
    if isinstance(exc, BaseExceptionGroup):
        found = {unavailable(e) for e in exc.exceptions}
        return found.pop() if len(found) == 1 and None not in found else None
    for link in _chain(exc):
        dependency = _classify_one(link)
        if dependency is not None:
            return dependency
    return None


class OutageMonitor:
    """What this process knows to be down; one log line per transition, probes to see it back.

    `probes` maps a dependency to a trivial command (`SELECT 1`, `PING`); without a probe
    a dependency is taken to be back after `retry_after` seconds without a new failure.
    """

    def __init__(
        self,
        probes: dict[Dependency, Probe] | None = None,
        *,
        retry_after: int = 5,
        probe_interval: float = 0.5,
        probe_timeout: float = 2.0,
    ) -> None:
        self.probes = dict(probes or {})
        self.retry_after = retry_after
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._down: dict[Dependency, float] = {}  # dependency -> monotonic time it went down
        self._last_failure: dict[Dependency, float] = {}
        self._up: dict[Dependency, asyncio.Event] = {}
        self._probes: dict[Dependency, asyncio.Task[None]] = {}
        self._closing = False
        self.transitions: list[tuple[Dependency, str]] = []  # (dependency, "down" | "up")

    def is_down(self, dependency: Dependency) -> bool:
        self._expire(dependency)
        return dependency in self._down

    def down(self) -> list[Dependency]:
        return [d for d in DEPENDENCIES if self.is_down(d)]

    def problem(self, dependency: Dependency) -> DependencyUnavailable:
        return DependencyUnavailable(dependency, self.retry_after)

    def failed(self, dependency: Dependency, exc: BaseException | None = None) -> None:
        """Record that `dependency` was found unreachable; logs only once per outage, once
        a probe has confirmed it (see the module docstring)."""
        self._last_failure[dependency] = time.monotonic()
        if dependency in self._down or dependency in self._probes:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if dependency not in self.probes or loop is None:
            self._declare(dependency, exc)
            return
        self._probes[dependency] = loop.create_task(
            self._watch(dependency, exc), name=f"outage-probe:{dependency}"
        )

    def check(self, exc: BaseException) -> Dependency | None:
        """`unavailable(exc)`, recording the outage when there is one."""
        dependency = unavailable(exc)
        if dependency is not None:
            self.failed(dependency, exc)
        return dependency

    async def wait_up(self, dependency: Dependency, timeout: float) -> bool:
        """Wait (at most `timeout` s) until `dependency` is back, or found not to have
        been down; True if it is up."""
        watch = self._probes.get(dependency)
        if watch is not None:  # confirming, or probing until back: either ends the task
            await asyncio.wait({watch}, timeout=timeout)
        elif self.is_down(dependency):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._event(dependency).wait()
        return not self.is_down(dependency) and dependency not in self._probes

    async def aclose(self) -> None:
        """Stop probing (bounded: a probe is a redis-py or asyncpg call, and a cancel that
        lands as one completes can be swallowed: gateway/stopping.py)."""
        self._closing = True
        tasks = list(self._probes.values())
        self._probes.clear()
        await asyncio.gather(*(cancel_and_wait(t, attempts=10) for t in tasks))

    def _event(self, dependency: Dependency) -> asyncio.Event:
        if dependency not in self._up:
            self._up[dependency] = asyncio.Event()
            self._up[dependency].set()
        return self._up[dependency]

    def _expire(self, dependency: Dependency) -> None:
        """Without a probe, quiet for `retry_after` seconds counts as back."""
        if dependency in self._down and dependency not in self.probes:
            if time.monotonic() - self._last_failure[dependency] >= self.retry_after:
                self._recovered(dependency)

    def _declare(self, dependency: Dependency, exc: BaseException | None) -> None:
        self._down[dependency] = time.monotonic()
        self._event(dependency).clear()
        self.transitions.append((dependency, "down"))
        log.error(
            f"{dependency} unavailable",
            dependency=dependency,
            error=repr(exc) if exc is not None else None,
        )

    def _recovered(self, dependency: Dependency) -> None:
        since = self._down.pop(dependency, None)
        if since is None:
            return
        self.transitions.append((dependency, "up"))
        log.warning(
            f"{dependency} available again",
            dependency=dependency,
            down_for_s=round(time.monotonic() - since, 2),
        )
        self._event(dependency).set()

    async def _answers(self, dependency: Dependency) -> bool:
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self.probes[dependency]()
        except Exception:  # down (or the probe itself failed): ask again later
            return False
        return True

    async def _watch(self, dependency: Dependency, exc: BaseException | None) -> None:
        """Confirm at once, then probe every `probe_interval` until it answers again."""
        try:
            if await self._answers(dependency):
                return  # a lost connection, not a lost server: nothing to report
            self._declare(dependency, exc)
            while not self._closing:
                await asyncio.sleep(self.probe_interval)
                if await self._answers(dependency):
                    self._recovered(dependency)
                    return
        finally:
            if self._probes.get(dependency) is asyncio.current_task():
                del self._probes[dependency]


class _OutageRecordFilter(logging.Filter):
    """Drops a library's log record whose exception is an outage the monitor reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or unavailable(exc) is None


def quiet_library_outage_logs() -> None:
    """asyncpg's pool logs a warning with a traceback each time it fails to reconnect its
    minimum size: during an outage that is one traceback per backoff step, repeating what
    the monitor said once. Idempotent."""
    logger = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OutageRecordFilter) for f in logger.filters):
        logger.addFilter(_OutageRecordFilter())
