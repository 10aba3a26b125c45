"""Run the speed suite and print the table: figure | reference | ours | ratio | target, with the machine.

Usage:
    python -m benchmarks                 # the full suite (about 10-20 minutes on 2 cores)
    python -m benchmarks --quick         # fewer files, rows and rounds: a few minutes
    python -m benchmarks --only 2 4      # some figures only (1 precompute, 2 query, 3 app, 4 cold start, 5 bf16,
                                         # 6 the Hub at 44k products, 7 precompute on Ray, 8 the approximate index
                                         # at 200k and 1M rows, 9 a pushed change taken live at 44k and 200k)
    python -m benchmarks --write         # also write the table into benchmarks/RESULTS.md

No network: the model has seeded random weights (speed does not depend on their values), the catalogue images
are generated JPEGs and the big bundle holds synthetic unit vectors. Generated files are cached in
benchmarks/.cache (or $FASHION_BENCH_CACHE). Medians of several interleaved runs; ratios matter more than the
absolute numbers on a shared machine, so the load average is printed too.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import data, machine
from benchmarks.report import Row, markdown

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BIG_ROWS = 44_000  # Kaggle's fashion-product-images-small


@dataclass
class Settings:
    runs: int
    precompute_images: int
    seed_images: int
    repeat: int
    neighbour_sizes: list[int]
    per_client: int
    cold_runs: int
    bf16_catalogue: int
    bf16_queries: int


FULL = Settings(5, 480, 48, 9, [5_000, 44_000, 200_000], 4, 3, 256, 32)
QUICK = Settings(2, 128, 16, 5, [5_000, 44_000], 2, 1, 64, 16)


@dataclass
class Context:
    weights: Path
    embedder: object
    rows: int = BIG_ROWS
    phases: dict | None = None
    log_lines: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        self.log_lines.append(text)
        print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few minutes)")
    parser.add_argument("--only", nargs="+", type=int, choices=range(1, 10), metavar="N", help="figures to run (1-9)")
    parser.add_argument(
        "--runs", type=int, help="rounds per figure (default 5, quick 2; precompute 3 / 2; cold start 3 / 1)"
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write the table into {RESULTS}",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.runs:
        settings.runs = args.runs
    figures = set(args.only or range(1, 10))

    info, load_before, started = machine.describe(), machine.load_average(), time.perf_counter()
    print(f"load average before: {load_before}", file=sys.stderr)
    weights = data.weights_file()
    from fashion_search.embedder import Embedder

    ctx = Context(weights=weights, embedder=Embedder.load(weights))
    rows: list[Row] = []
    loads: dict[int, str] = {}  # 1-minute load average as each figure starts
    if 1 in figures:
        loads[1] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_precompute

        runs = args.runs or min(settings.runs, 3)  # its rounds are long: a fresh precompute.py each
        rows += bench_precompute.run(ctx, runs, settings.precompute_images, settings.seed_images)
    if 2 in figures:
        loads[2] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_query

        rows += bench_query.run_query(ctx, settings.runs, settings.repeat, BIG_ROWS)
        rows += bench_query.run_neighbours(ctx, settings.runs, settings.repeat, settings.neighbour_sizes)
    if 3 in figures:
        loads[3] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_app

        rows += bench_app.run(ctx, settings.runs, settings.repeat, settings.per_client)
    if 4 in figures:
        loads[4] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_cold_start

        rows += bench_cold_start.run(ctx, args.runs or settings.cold_runs)
    if 5 in figures:
        loads[5] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_bf16

        rows += bench_bf16.run(ctx, settings.runs, settings.bf16_catalogue, settings.bf16_queries)
    if 6 in figures:
        loads[6] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_hub

        rows += bench_hub.run(ctx)
    if 7 in figures:
        loads[7] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_ray

        # Its rounds are long (two commands and four builds, each Ray pool loading its models): at most 2. At least
        # 240 files (8 chunks) even when quick: its steady rates are timed from the first chunk back to the last.
        rows += bench_ray.run(ctx, args.runs or min(settings.runs, 2), max(240, settings.precompute_images // 2))

    if 8 in figures:
        loads[8] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_ann

        # Quick: 200k rows only (the 1M bundle takes about 20 minutes to make once, and 9 GB of disk).
        rows += bench_ann.run(ctx, settings.runs, (200_000,) if args.quick else bench_ann.SIZES)
    if 9 in figures:
        loads[9] = machine.load_average().split(" / ")[0]
        from benchmarks import bench_live

        # Quick: 44k only. The 200k run pushes and loads three changes of a catalogue with the approximate index; the
        # million-row run is by hand (four revisions of 9 GB and their copies on the stand-in and in the app's cache):
        # python -m benchmarks.bench_live --parts large --rows 1000000.
        rows += bench_live.run(ctx, None if args.quick else bench_live.LARGE)

    minutes = (time.perf_counter() - started) / 60
    command = (
        "python -m benchmarks"
        + (" --quick" if args.quick else "")
        + (f" --only {' '.join(map(str, sorted(figures)))}" if args.only else "")
    )
    text = "\n\n".join(
        [
            f"Measured with `{command}` in {minutes:.1f} min on:",
            machine.describe_markdown(info, load_before, machine.load_average())
            + "\n- 1-minute load average as each figure started: "
            + ", ".join(f"figure {n}: {load}" for n, load in loads.items()),
            markdown(rows),
        ]
    )
    print(text)
    if args.write:
        write_results(text)
    return 0


def write_results(table: str) -> None:
    body = RESULTS.read_text() if RESULTS.exists() else ""
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    if begin in body and end in body:
        head, rest = body.split(begin, 1)
        tail = rest.split(end, 1)[1]
        RESULTS.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
    else:
        RESULTS.write_text(f"# Benchmark results\n\n{begin}\n{table}\n{end}\n")
