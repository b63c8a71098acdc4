"""SIP trunk channel pools (DESIGN principle 8): leased Redis semaphores with a fair wait.

pools = TrunkPools(redis, TrunkPoolsConfig(trunk="main"))
permit = await pools.get("campaign").acquire(call_id, timeout=5)   # before Originate
await pools.get("campaign").renew(call_id)                          # while the call lives
await pools.get("campaign").release(call_id)                        # on Hangup, any process
async with pools.get("api").permit(timeout=2): ...                  # short jobs
pools.rebuild_from(source)   # where holders come from after Redis restarts empty (principle 10)
"""

from sip.pools._rebuild import HolderSource, PoolHolders
from sip.pools.config import DEFAULT_SIZES, PoolConfig, TrunkPoolsConfig
from sip.pools.errors import (
    PermitLost,
    PoolError,
    PoolExhausted,
    PoolStateUnavailable,
    PoolTimeout,
    UnknownPool,
)
from sip.pools.pool import Permit, Pool, PoolOccupancy, PoolStats, TrunkPools

__all__ = [
    "DEFAULT_SIZES",
    "HolderSource",
    "Permit",
    "PermitLost",
    "Pool",
    "PoolConfig",
    "PoolError",
    "PoolExhausted",
    "PoolHolders",
    "PoolOccupancy",
    "PoolStateUnavailable",
    "PoolStats",
    "PoolTimeout",
    "TrunkPools",
    "TrunkPoolsConfig",
    "UnknownPool",
]
