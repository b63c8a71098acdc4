"""The attempt keys Trunkline chooses for the calls it places, and how to recognise them.

An attempt key is sent as the Originate ``ChannelId``, so Asterisk uses it as the channel's
``Uniqueid`` *and* ``Linkedid`` from the first ``Newchannel`` on (README "Correlating"): every
event of the leg, and every leg Dial creates from it, carries it. The AI-agent leg of the same
attempt gets the same key plus ``-agent``. Anything else on the Asterisk (inbound IVR calls,
other applications' originates) is not ours and is left alone.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

_KEY = re.compile(
    r"^(?P<key>tl-(?P<call>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-(?P<n>\d+))"
    r"(?P<agent>-agent)?$"
)
AGENT_SUFFIX = "-agent"


@dataclass(frozen=True)
class LegKey:
    attempt_key: str  # the customer leg's key (the call attempt)
    call_id: uuid.UUID
    n: int
    leg: Literal["customer", "agent"]

    @property
    def channel_id(self) -> str:
        return self.attempt_key + (AGENT_SUFFIX if self.leg == "agent" else "")


def attempt_key(call_id: uuid.UUID | str, n: int) -> str:
    return f"tl-{call_id}-{n}"


def agent_key(key: str) -> str:
    return key + AGENT_SUFFIX


def parse(value: str | None) -> LegKey | None:
    """The leg a Uniqueid/Linkedid/ChannelId names, if it is one of ours."""
    if not value:
        return None
    match = _KEY.match(value.strip())
    if match is None:
        return None
    return LegKey(
        match["key"],
        uuid.UUID(match["call"]),
        int(match["n"]),
        "agent" if match["agent"] else "customer",
    )
