"""Errors a caller of the pools can act on: reject with Retry-After, give up, or re-acquire."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError


class PoolError(Exception):
    """Base for channel-pool errors."""


class UnknownPool(PoolError, KeyError):
    """A pool name that the trunk's configuration does not define."""

    def __init__(self, trunk: str, pool: str, known: list[str]) -> None:
        super().__init__(f"trunk {trunk!r} has no pool {pool!r} (pools: {', '.join(known)})")
        self.trunk = trunk
        self.pool = pool

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PoolExhausted(PoolError):
    """No permit is free; `retry_after` (seconds) is what the API puts in Retry-After."""

    def __init__(
        self, trunk: str, pool: str, *, size: int, in_use: int, waiting: int, retry_after: float
    ) -> None:
        super().__init__(
            f"pool {trunk}/{pool} is full ({in_use}/{size} channels in use, {waiting} waiting);"
            f" retry after {retry_after:g}s"
        )
        self.trunk = trunk
        self.pool = pool
        self.size = size
        self.in_use = in_use
        self.waiting = waiting
        self.retry_after = retry_after


class PoolTimeout(PoolExhausted):
    """A fair wait reached its deadline without a permit (a PoolExhausted, so one handler fits)."""

    def __init__(
        self,
        trunk: str,
        pool: str,
        *,
        size: int,
        in_use: int,
        waiting: int,
        retry_after: float,
        waited: float,
    ) -> None:
        super().__init__(
            trunk, pool, size=size, in_use=in_use, waiting=waiting, retry_after=retry_after
        )
        self.args = (f"waited {waited:.3f}s: {self.args[0]}",)
        self.waited = waited


class PermitLost(PoolError):
    """The permit's lease lapsed (or it was released/reconciled) before renew: stop the call."""

    def __init__(self, trunk: str, pool: str, holder: str) -> None:
        super().__init__(
            f"permit of {holder!r} in pool {trunk}/{pool} is gone (lease expired or released)"
        )
        self.trunk = trunk
        self.pool = pool
        self.holder = holder


class PoolStateUnavailable(PoolError, RedisConnectionError):
    """The pools' Redis state was lost (Redis restarted empty, or was flushed) and could not
    be rebuilt from the calls table within `rebuild_timeout`.

    Nothing is admitted meanwhile. It is a Redis `ConnectionError` on purpose: to a caller
    it is Redis being unusable (an outage of ours: answer 503, let the job wait), not a full
    pool and not a provider's failure.
    """

    def __init__(self, trunk: str, detail: str) -> None:
        super().__init__(f"trunk {trunk!r}: channel pool state is being rebuilt ({detail})")
        self.trunk = trunk
