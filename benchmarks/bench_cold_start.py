"""Figure 4: cold start — `python app.py` with a cached 44k-row bundle until its first answer; peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import data
from benchmarks.bench_query import QUERY_SIZE
from benchmarks.report import Row, value, verdict
from benchmarks.servers import QUIET_ENV, ROOT, Server, ask, client
from benchmarks.timing import Samples

TARGET_SECONDS = 12.0


def run(ctx, runs: int, phases: bool = True) -> list[Row]:
    import os

    log = ctx.log
    catalogue = data.big_bundle(ctx.rows, ctx.weights, log=log)
    query = Path(tempfile.mkdtemp(prefix="bench-cold-")) / "query.jpg"
    query.write_bytes(data.jpeg_bytes(data.draw_product(np.random.default_rng(3), QUERY_SIZE)))
    first, ready, peak = Samples("s"), Samples("s"), Samples("MB")
    for r in range(runs):
        log(f"figure 4: round {r + 1}/{runs}: python app.py --catalog <{ctx.rows:,} rows> until the first answer ...")
        with Server.app(catalogue, ctx.weights) as app:
            up = app.wait_ready(poll=0.02)
            ask(client(app.url), query)
            first.values.append(time.perf_counter() - app.started)
            ready.values.append(up)
            peak.values.append(app.peak_rss_mb())
    log(f"  first answer {first.values} s, serving {ready.values} s, peak RSS {peak.values} MB")
    rows = [
        Row(
            f"4: cold start, `python app.py` → first answer ({ctx.rows // 1000}k-row bundle, OS file cache warm)",
            "—",
            value(first),
            "",
            f"≤ {TARGET_SECONDS:.0f} s",
            verdict(first.median <= TARGET_SECONDS),
        ),
        Row("4: … of which until the server answers HTTP", "—", value(ready), "", "(information)"),
        Row(
            "4: cold start peak RSS (kernel VmHWM)",
            "—",
            value(peak, digits=4),
            "",
            "(information)",
        ),
    ]
    if phases:
        log("figure 4: start-up phases in a fresh process ...")
        env = {**os.environ, **QUIET_ENV}
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "cold_start_phases.py"), str(catalogue), str(ctx.weights)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cold_start_phases.py failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        for phase in result["phases"]:
            rows.append(
                Row(
                    f"4 phase: {phase['phase']}",
                    "—",
                    f"{phase['seconds'] * 1e3:.0f} ms",
                    "",
                    f"peak RSS so far {phase['peak_rss_mb']:.0f} MB",
                )
            )
        ctx.phases = result
    return rows
