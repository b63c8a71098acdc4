"""Local presence: the caller id of a campaign dial, chosen from the tenant's own DIDs.

For a prospect, in this order: a DID with the prospect's area code; else one in the same state
(the prospect's address `state`, else its area code's state); else one in the same time zone;
else the campaign's `fallback`. Several DIDs of one kind take turns by prospect id, so a list's
dials spread over them.

The DIDs are read once per campaign run and kept (`CallerIds`, refreshed every `ttl` seconds so
that a DID rested by its health — campaigns/didhealth.py — drops out, and a restored one comes
back): choosing is a dictionary lookup, never a query per dial.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import asyncpg
import phonenumbers
from phonenumbers import timezone as pn_timezone

from guardrails.rules import Rules, npa_of

_UNKNOWN_ZONE = "Etc/Unknown"

# The tenant's voice DIDs that are not resting (migration 0019: did_rests).
_USABLE_DIDS = """
SELECT d.number FROM dids d
 WHERE d.tenant_id = $1 AND 'voice' = ANY(d.capabilities)
   AND NOT EXISTS (SELECT 1 FROM did_rests r WHERE r.did = d.number AND r.until > now()
                                              AND r.restored_at IS NULL)
 ORDER BY d.number
"""


@dataclass(frozen=True)
class Place:
    """Where a number is: its area code, state and time zones (any may be unknown)."""

    npa: str | None
    state: str | None
    zones: tuple[str, ...]


def place_of(number: str, rules: Rules, state: str | None = None) -> Place:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return Place(None, state, ())
    npa = npa_of(parsed)
    zones = rules.zones_for_npa(npa) if npa else None
    if not zones:
        zones = tuple(z for z in pn_timezone.time_zones_for_number(parsed) if z != _UNKNOWN_ZONE)
    npa_state = rules.state_for_npa(npa) if npa else None
    return Place(npa, (state or npa_state or None), tuple(sorted(zones)))


@dataclass
class LocalPresence:
    """The choice over one tenant's usable DIDs (pure, built once)."""

    fallback: str | None
    by_npa: dict[str, list[str]] = field(default_factory=dict)
    by_state: dict[str, list[str]] = field(default_factory=dict)
    by_zone: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, dids: Iterable[str], rules: Rules, fallback: str | None) -> LocalPresence:
        lp = cls(fallback)
        for did in dids:
            if did == fallback:
                continue  # the fallback is chosen last, never as a near number
            p = place_of(did, rules)
            if p.npa:
                lp.by_npa.setdefault(p.npa, []).append(did)
            if p.state:
                lp.by_state.setdefault(p.state, []).append(did)
            for zone in p.zones:
                lp.by_zone.setdefault(zone, []).append(did)
        return lp

    def choose(self, place: Place, turn: int = 0) -> tuple[str | None, str]:
        """(caller id, why): why is area_code, state, time_zone or fallback."""
        if place.npa and place.npa in self.by_npa:
            return _turn(self.by_npa[place.npa], turn), "area_code"
        if place.state and place.state.upper() in self.by_state:
            return _turn(self.by_state[place.state.upper()], turn), "state"
        for zone in place.zones:
            if zone in self.by_zone:
                return _turn(self.by_zone[zone], turn), "time_zone"
        return self.fallback, "fallback"


def _turn(options: list[str], turn: int) -> str:
    return options[turn % len(options)]


@dataclass
class CallerIds:
    """Local presence per campaign, read once per run and kept for `ttl` seconds."""

    db: asyncpg.Pool
    rules: Callable[[], Rules]
    ttl: float = 30.0
    _cache: dict[uuid.UUID, tuple[float, LocalPresence]] = field(default_factory=dict)
    _loading: asyncio.Lock = field(default_factory=asyncio.Lock)
    loads: int = 0  # how many times DIDs were read (tests: never once per dial)

    async def for_campaign(
        self, campaign_id: uuid.UUID, tenant_id: uuid.UUID, fallback: str | None
    ) -> LocalPresence:
        found = self._cache.get(campaign_id)
        if found is not None and time.monotonic() - found[0] < self.ttl:
            return found[1]
        async with self._loading:  # the attempts of one claim, sent at once, read it once
            found = self._cache.get(campaign_id)
            if found is not None and time.monotonic() - found[0] < self.ttl:
                return found[1]
            rows = await self.db.fetch(_USABLE_DIDS, tenant_id)
            self.loads += 1
            lp = LocalPresence.build([r["number"] for r in rows], self.rules(), fallback)
            self._cache[campaign_id] = (time.monotonic(), lp)
            return lp

    def forget(self, campaign_id: uuid.UUID | None = None) -> None:
        """Read the DIDs again at the next dial (all campaigns when None)."""
        if campaign_id is None:
            self._cache.clear()
        else:
            self._cache.pop(campaign_id, None)

    async def choose(
        self,
        campaign_id: uuid.UUID,
        tenant_id: uuid.UUID,
        fallback: str | None,
        number: str,
        state: str | None,
        turn: int,
    ) -> tuple[str | None, str]:
        lp = await self.for_campaign(campaign_id, tenant_id, fallback)
        return lp.choose(place_of(number, self.rules(), state), turn)
