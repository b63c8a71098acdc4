"""A campaign's configuration as the dialer reads it: plain dataclasses over the stored JSON.

The JSON is validated once, at the edge (gateway/campaigns/schemas.py); what is stored is the
normalised form, so reading it back here needs no second validation — only the few derived
values the dialer uses (retry delays in seconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(text: str) -> float:
    """'10m' → 600.0; units ms, s, m, h, d (ValueError otherwise)."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration like 500ms, 30s, 10m, 2h or 1d")
    return float(found.group(1)) * _UNIT[found.group(2)]


def parse_days(spec: str | list[str]) -> list[int]:
    """'mon-fri' or ['mon', 'wed'] or 'mon,wed,fri' → ISO weekdays [1..7], sorted."""
    parts = spec if isinstance(spec, list) else spec.replace(" ", "").split(",")
    out: set[int] = set()
    for part in parts:
        part = part.strip().lower()
        if "-" in part:
            first, _, last = part.partition("-")
            a, b = _day(first), _day(last)
            if b < a:
                raise ValueError(f"{part!r}: a day range goes forward (e.g. mon-fri)")
            out.update(range(a, b + 1))
        else:
            out.add(_day(part))
    if not out:
        raise ValueError("give at least one day")
    return sorted(out)


def _day(name: str) -> int:
    try:
        return DAYS.index(name[:3]) + 1
    except ValueError:
        raise ValueError(f"{name!r} is not a day (mon … sun)") from None


@dataclass(frozen=True)
class Retry:
    busy: float | None  # seconds before the next attempt; None: no retry for this outcome
    no_answer: float | None
    machine: float | None
    max_attempts: int

    def delay_for(self, outcome: str) -> float | None:
        return {"busy": self.busy, "no_answer": self.no_answer, "machine": self.machine}.get(
            outcome
        )


@dataclass(frozen=True)
class CampaignConfig:
    channel: str
    purpose: str
    max_concurrent: int
    cps: float
    retry: Retry
    window: dict[str, Any]  # as campaign_window_open (migration 0015) reads it
    ring_timeout: int
    max_duration: int | None
    amd: bool
    on_machine: str  # hangup | retry
    on_answer: dict[str, Any] | None
    caller_id: str | None
    local_presence: bool
    body: str | None
    template: str | None

    @classmethod
    def from_row(cls, channel: str, purpose: str, config: dict[str, Any]) -> CampaignConfig:
        retry = config.get("retry") or {}

        def after(name: str) -> float | None:
            rule = retry.get(name)
            return None if not rule else parse_duration(rule["after"])

        pacing = config["pacing"]
        return cls(
            channel=channel,
            purpose=purpose,
            max_concurrent=int(pacing["max_concurrent"]),
            cps=float(pacing["cps"]),
            retry=Retry(
                busy=after("busy"),
                no_answer=after("no_answer"),
                machine=after("machine"),
                max_attempts=int(retry.get("max_attempts", 1)),
            ),
            window=config["window"],
            ring_timeout=int(config.get("ring_timeout", 30)),
            max_duration=config.get("max_duration"),
            amd=bool(config.get("amd", False)),
            on_machine=config.get("on_machine", "hangup"),
            on_answer=config.get("on_answer"),
            caller_id=(config.get("caller_id") or {}).get("fallback"),
            local_presence=bool((config.get("caller_id") or {}).get("local_presence")),
            body=config.get("body"),
            template=config.get("template"),
        )
