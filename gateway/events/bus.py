"""The Redis side of the event bus: one pub/sub channel per tenant.

The sequencer publishes each event after the transaction that gave it its
seq has committed, in seq order, so a subscriber of the pattern sees the
global seq increasing. Pub/sub is lossy (a reconnect drops messages), which is
why every subscriber can fill a gap from the log in PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
import redis.asyncio as aioredis

from gateway.events.model import event_json, spliced_event_json
from gateway.redis import LuaScript

CHANNEL_PREFIX = "trunkline:events:"
PATTERN = CHANNEL_PREFIX + "*"


def channel(tenant_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{tenant_id}"


def tenant_of(channel_name: bytes | str) -> str:
    name = channel_name.decode() if isinstance(channel_name, bytes) else channel_name
    return name[len(CHANNEL_PREFIX) :]


# Every (channel, message) pair of a batch in one command, published in order, packed in ONE
# argument as lines (channel, message, channel, message, …): an event's JSON is one line
# (model.event_json), and one argument costs the client a fraction of two per event.
_PUBLISH_MANY = LuaScript(
    """
local s, i, n = ARGV[1], 1, 0
while true do
  local a = string.find(s, '\\n', i, true)
  if not a then break end
  local b = string.find(s, '\\n', a + 1, true) or (#s + 1)
  redis.call('PUBLISH', string.sub(s, i, a - 1), string.sub(s, a + 1, b - 1))
  n = n + 1
  i = b + 1
end
return n
""",
    name="publish_many",
)


async def publish(redis: aioredis.Redis, rows: Sequence[asyncpg.Record]) -> None:
    """Publish sequenced rows (in seq order) with one round trip. Rows with `data_json` (the
    sequencer's: the data as PostgreSQL's text) have it spliced in (model.spliced_event_json)."""
    if not rows:
        return
    to_json = spliced_event_json if "data_json" in rows[0].keys() else event_json
    lines: list[str] = []
    for row in rows:
        lines += (channel(row["tenant_id"]), to_json(row))
    await _PUBLISH_MANY(redis, (), ["\n".join(lines)])
