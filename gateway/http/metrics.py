"""A small Prometheus text-format registry: counters and histograms with labels.

Kept in-process on purpose: each daemon process exposes its own /metrics and
Prometheus aggregates across processes, as with any multi-process service.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in items
    )
    return "{" + inner + "}"


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_fmt_labels(k)} {v}" for k, v in sorted(self.values.items())]
        return out


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, n in zip(self.buckets, counts, strict=False):
                running += n
                out.append(
                    f"{self.name}_bucket{_fmt_labels(key, (('le', repr(bound)),))} {running}"
                )
            running += counts[-1]
            out.append(f"{self.name}_bucket{_fmt_labels(key, (('le', '+Inf'),))} {running}")
            out.append(f"{self.name}_sum{_fmt_labels(key)} {self.sums[key]}")
            out.append(f"{self.name}_count{_fmt_labels(key)} {running}")
        return out


@dataclass
class Gauge:
    """Read at scrape time from a callback, so it is never stale."""

    name: str
    help: str
    read: Callable[[], dict[Labels, float]]

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        out += [f"{self.name}{_fmt_labels(k)} {v}" for k, v in sorted(self.read().items())]
        return out


def render_family(
    name: str, help: str, kind: str, samples: dict[Labels, float] | list[tuple[Labels, float]]
) -> list[str]:
    """One metric family in the text format, for figures computed at scrape time."""
    items = sorted(samples.items()) if isinstance(samples, dict) else samples
    out = [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    out += [f"{name}{_fmt_labels(k)} {v}" for k, v in items]
    return out


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Counter | Histogram | Gauge] = {}

    def counter(self, name: str, help: str) -> Counter:
        return self._metrics.setdefault(name, Counter(name, help))  # type: ignore[return-value]

    def histogram(self, name: str, help: str) -> Histogram:
        return self._metrics.setdefault(name, Histogram(name, help))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, read: Callable[[], dict[Labels, float]]) -> Gauge:
        return self._metrics.setdefault(name, Gauge(name, help, read))  # type: ignore[return-value]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.render()
        return "\n".join(lines) + "\n"
