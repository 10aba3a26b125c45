"""Figure 5 (stretch): the embedder in bfloat16 (`--precision bfloat16`) against float32: throughput, top-5 overlap."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from benchmarks.report import Row, ratio, verdict
from benchmarks.servers import QUIET_ENV, ROOT
from fashion_search.embedder import PRECISIONS


def run(ctx, runs: int, catalogue: int, queries: int) -> list[Row]:
    """Each round runs a float32 process and then a bfloat16 one (the setting is per process), side by side."""
    from fashion_search.embedder import cpu_has_bf16

    if not cpu_has_bf16():
        ctx.log("figure 5: skipped: this CPU has no bf16 instructions, where the app refuses bfloat16")
        return [Row("5: bfloat16 forward", "—", "not measured: no AVX512_BF16 or AMX on this CPU", "", "(information)")]
    rates: dict[str, dict[str, list[float]]] = {p: {} for p in PRECISIONS}
    work = Path(tempfile.mkdtemp(prefix="bench-bf16-"))
    for r in range(runs):
        for precision in PRECISIONS:
            ctx.log(f"figure 5: round {r + 1}/{runs}: {precision} in a process of its own ...")
            result = _probe(ctx.weights, precision, work / f"{precision}.npz", catalogue, queries)
            for size, rate in result["rates"].items():
                rates[precision].setdefault(size, []).append(rate)
    ctx.log(f"  images/s {rates}")
    tops = {}
    for precision in PRECISIONS:
        vectors = np.load(work / f"{precision}.npz")
        index = NearestNeighbors(n_neighbors=5, algorithm="brute", metric="euclidean").fit(vectors["catalogue"])
        tops[precision] = index.kneighbors(vectors["queries"], return_distance=False)
    overlap = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(*tops.values())]))
    same_top1 = float(np.mean(tops["float32"][:, 0] == tops["bfloat16"][:, 0]))
    med = {p: {size: statistics.median(values) for size, values in rates[p].items()} for p in PRECISIONS}
    rows = []
    for size, label, target in (
        ("32", "batch 32 (precompute's)", "≥ 1.5 ×"),
        ("8", "batch 8 (the app's, 8 clients)", "(information)"),
        ("1", "one image", "(information)"),
    ):
        speed = med["bfloat16"][size] / med["float32"][size]
        rows.append(
            Row(
                f"5: bfloat16 forward, {label}",
                f"float32 {med['float32'][size]:.2f} img/s",
                f"{med['bfloat16'][size]:.2f} img/s (n={runs})",
                ratio(speed),
                target,
                verdict(speed >= 1.5) if target.startswith("≥") else "",
            )
        )
    rows.append(
        Row(
            f"5: bfloat16 top-5 overlap with float32 ({queries} queries, {catalogue} products, random weights)",
            "float32 top-5",
            f"{overlap:.3f} (top-1 same {same_top1:.2f})",
            "",
            "≥ 0.95",
            verdict(overlap >= 0.95),
        )
    )
    return rows


def _probe(weights: Path, precision: str, vectors: Path, catalogue: int, queries: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bf16_probe.py"),
            str(weights),
            "--precision",
            precision,
            "--vectors",
            str(vectors),
            "--catalogue",
            str(catalogue),
            "--queries",
            str(queries),
        ],
        cwd=ROOT,
        env={**os.environ, **QUIET_ENV},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bf16_probe.py --precision {precision} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
