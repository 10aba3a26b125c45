"""Figure 5 (stretch): Keras mixed_bfloat16 vs float32 — throughput and top-5 overlap."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from benchmarks.report import Row, ratio, verdict
from benchmarks.servers import QUIET_ENV, ROOT


def run(ctx, runs: int, catalogue: int, queries: int) -> list[Row]:
    ctx.log("figure 5: bf16 (mixed_bfloat16) vs fp32 in a separate process ...")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bf16_probe.py"), str(ctx.weights), "--runs", str(runs),
         "--catalogue", str(catalogue), "--queries", str(queries)],
        cwd=ROOT, env={**os.environ, **QUIET_ENV}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"bf16_probe.py failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ctx.log(f"  {result}")
    med = {name: statistics.median(values) for name, values in result["rates"].items()}
    speed, single, overlap = med["bf16"] / med["fp32"], med["bf16_single"] / med["fp32_single"], result["overlap"]
    n = len(result["rates"]["fp32"])
    return [
        Row("5: bf16 forward, batch 32 (stretch)", f"fp32 {med['fp32']:.2f} img/s", f"{med['bf16']:.2f} img/s (n={n})",
            ratio(speed), "≥ 1.5 ×", verdict(speed >= 1.5)),
        Row("5: bf16 forward, one image", f"fp32 {med['fp32_single']:.2f} img/s", f"{med['bf16_single']:.2f} img/s",
            ratio(single), "(information)"),
        Row(f"5: bf16 top-5 overlap with fp32 ({queries} queries, {catalogue} products, random weights)", "fp32 top-5",
            f"{overlap:.3f} (top-1 same {result['same_top1']:.2f})", "", "≥ 0.95", verdict(overlap >= 0.95)),
    ]  # fmt: skip
