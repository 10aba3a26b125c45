"""Timing helpers: references and candidates measured interleaved (A B A B ...), so machine noise hits both alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Samples:
    """Repeated measurements of one figure (seconds, or a rate), summarised by the median."""

    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def spread(self) -> str:
        if len(self.values) < 2:
            return ""
        return f"{min(self.values):.4g}–{max(self.values):.4g}"


def seconds(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], float]], runs: int, units: dict[str, str]) -> dict[str, Samples]:
    """Call every case once per round, `runs` rounds; each call returns its own measurement."""
    samples = {name: Samples(units[name]) for name in cases}
    for _ in range(runs):
        for name, case in cases.items():
            samples[name].values.append(case())
    return samples


def per_call(func: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` calls (one measurement for `interleaved`)."""
    return statistics.median(seconds(func) for _ in range(repeat))
