"""The results table: figure | reference | ours | ratio | target, as markdown."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.timing import Samples


@dataclass
class Row:
    figure: str
    reference: str  # what we compare against, with its median
    ours: str  # our median (and range over runs)
    ratio: str  # ours / reference, in the direction the target is written
    target: str
    verdict: str = ""  # "met", "NOT met", or "" for information only


def value(samples: Samples, scale: float = 1.0, unit: str | None = None, digits: int = 3) -> str:
    """'12.3 img/s (n=3, 11.9–12.8)': the median, then how many runs and their range."""
    unit = samples.unit if unit is None else unit
    med = samples.median * scale
    text = f"{_num(med, digits)} {unit}".strip()
    if len(samples.values) > 1:
        lo, hi = min(samples.values) * scale, max(samples.values) * scale
        text += f" (n={len(samples.values)}, {_num(lo, digits)}–{_num(hi, digits)})"
    return text


def ms(samples: Samples) -> str:
    return value(samples, 1000.0, "ms")


def ratio(x: float) -> str:
    return f"{x:.2f}×"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _num(x: float, digits: int) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def markdown(rows: list[Row]) -> str:
    lines = ["| figure | reference | ours | ratio | target | |", "|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row.figure, row.reference, row.ours, row.ratio, row.target, row.verdict]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
