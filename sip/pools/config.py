"""Pool configuration as plain dataclasses; the daemon maps its settings onto these."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_SIZES: dict[str, int] = {"campaign": 60, "ivr": 15, "api": 8}

# Names end up inside Redis keys and the cluster hash tag, so no braces, colons or spaces.
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r}: expected letters, digits, '_', '.', '-'")


@dataclass(frozen=True)
class PoolConfig:
    """One pool: how many channels, and how long a permit lives without a renew (seconds)."""

    size: int
    lease: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"pool size {self.size!r}: expected an integer >= 0")
        if not self.lease > 0.001:
            raise ValueError(f"pool lease {self.lease!r}: expected seconds > 0.001")


def _default_pools() -> dict[str, PoolConfig]:
    return {name: PoolConfig(size) for name, size in DEFAULT_SIZES.items()}


@dataclass(frozen=True)
class TrunkPoolsConfig:
    """The pools of one SIP trunk.

    `retry_after_min/max` bound the Retry-After hint of a rejection. `reconcile_min_age`
    spares permits younger than this from `reconcile`: a call takes its permit before
    Originate, so for a moment it holds a permit that Asterisk does not list yet.
    `rebuild_timeout` bounds how long an acquire waits for the pools' state to be rebuilt
    after Redis lost it (and how long one process may hold the rebuild lock).
    """

    trunk: str = "default"
    pools: Mapping[str, PoolConfig] = field(default_factory=_default_pools)
    retry_after_min: float = 1.0
    retry_after_max: float = 30.0
    reconcile_min_age: float = 10.0
    rebuild_timeout: float = 10.0
    key_prefix: str = "tl:pool"

    def __post_init__(self) -> None:
        _check_name("trunk", self.trunk)
        for name in self.pools:
            _check_name("pool", name)
        if not 0 <= self.retry_after_min <= self.retry_after_max:
            raise ValueError("retry_after_min/max: expected 0 <= min <= max")
        if self.reconcile_min_age < 0:
            raise ValueError("reconcile_min_age: expected seconds >= 0")
        if not self.rebuild_timeout > 0:
            raise ValueError("rebuild_timeout: expected seconds > 0")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TrunkPoolsConfig:
        """Build from a dict (e.g. a TOML table); a pool may be just its size or {size, lease}."""
        data = dict(data)
        pools: dict[str, PoolConfig] = {}
        for name, spec in dict(data.pop("pools", DEFAULT_SIZES)).items():
            if isinstance(spec, PoolConfig):
                pools[name] = spec
            elif isinstance(spec, Mapping):
                pools[name] = PoolConfig(**spec)
            else:
                pools[name] = PoolConfig(spec)
        return cls(pools=pools, **data)
