"""Figure 12: the approximate index's codes across a swap (issue 30) — what a swap reads, and what a scan costs on
each of the three ways a revision holds its codes (fashion_search/codes.py).

    python -m benchmarks.bench_codes                    # 1,000,000 rows (about 4 GB of files, cached)
    python -m benchmarks.bench_codes --rows 200000

The codes are synthetic (seeded normal 256-d rows, 1 KB each) in pieces of 8,192 rows, as a push writes them, with
4 sqrt(n) lists of random sizes. Revision 1 is every piece; revision 2 a 1 % change as figure 9's (0.5 % of the rows
sold out at random places, 0.5 % new in a new piece). In one process, the real code: revision 1's codes read in its
pieces' files (InPieces), then put together (`codes.assemble`, InList); revision 2 opened on revision 1's file as its
base (`codes.link_base`, OnBase) with every codes file dropped from the page cache first. What revision 2's opening
and its searches read of the unchanged pieces' files is what the page cache holds of them afterwards (`fincore`).
Side by side in the same run: `score_lists` over 96 lists (about 24k rows at 1M, figure 8's depth) on each layout.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from mounted import drop_cached, resident  # tests/ is on the path

from benchmarks import data
from benchmarks.report import Row, markdown, verdict
from fashion_search import codes
from fashion_search.approximate import _layout
from fashion_search.files import sha256_file
from fashion_search.index import limited_threads
from fashion_search.vectors import StackedVectors

DIMS = 256
PIECE = 8192
PROBED = 96
QUERIES = 200
IN_PIECES = "in the pieces' files"


def _pieces(folder: Path, rows: int, seed: int) -> list[Path]:
    """Codes files of `rows` rows in pieces of PIECE (made once)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, start in enumerate(range(0, rows, PIECE)):
        path = folder / f"codes-{seed}-{number}.npy"
        if not path.is_file():
            rng = np.random.default_rng([seed, number])
            np.save(path, rng.standard_normal((min(PIECE, rows - start), DIMS), dtype=np.float32))
        files.append(path)
    return files


def _revision(root: Path, files: list[Path], removed: list[np.ndarray]):
    """A revision folder's codes listing over `files`, each less its `removed` rows; (the vectors' stand-in: the
    codes files themselves with their live rows, the listing's entries)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = [{"path": str(f), "size": f.stat().st_size, "sha256": _digest(f), "checked": True} for f in files]
    (root / codes.CODES_LIST).write_text(json.dumps({"pieces": entries}))
    parts = []
    for file, gone in zip(files, removed):
        array = np.load(file, mmap_mode="r")
        parts.append((array, np.setdiff1d(np.arange(len(array)), gone)))
    return StackedVectors(parts)


_digests: dict[str, str] = {}


def _digest(path: Path) -> str:
    key = f"{path}:{path.stat().st_size}"
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


def _copy_listing(root: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / codes.CODES_LIST, folder / codes.CODES_LIST)
    return folder


def _time(layout_codes, probe_sets: list[np.ndarray], queries: np.ndarray) -> float:
    """Median seconds of score_lists over the probe sets."""
    times = []
    with limited_threads():
        for probed, query in zip(probe_sets, queries):
            started = time.perf_counter()
            layout_codes.score_lists(probed, query)
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def run(rows: int, log=print) -> list[Row]:
    work = data.CACHE / f"codes-{rows}-v1"
    lists_count = round(4 * math.sqrt(rows))
    rng = np.random.default_rng(0)
    first_files = _pieces(work / "pieces", rows, 1)
    sold = np.sort(rng.choice(rows, rows // 200, replace=False))  # 0.5 % at random places
    new_files = _pieces(work / "new", rows // 200, 2)
    sizes = [len(np.load(f, mmap_mode="r")) for f in first_files]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    removed = [sold[(sold >= a) & (sold < b)] - a for a, b in zip(starts, starts[1:])]
    lists_one = rng.integers(0, lists_count, rows).astype(np.int32)
    lists_new = rng.integers(0, lists_count, rows // 200).astype(np.int32)
    queries = rng.standard_normal((QUERIES, DIMS)).astype(np.float32)
    probe_sets = [rng.choice(lists_count, PROBED, replace=False) for _ in range(QUERIES)]

    revisions = work / "revisions"
    shutil.rmtree(revisions, ignore_errors=True)
    log(f"figure 12: {rows:,} rows, {len(first_files)} pieces, {lists_count:,} lists: revision 1 ...")
    one = revisions / "one"
    pieces_one = _revision(one, first_files, [np.empty(0, np.int64)] * len(first_files))
    layout_one = _layout(lists_one, lists_count)
    in_pieces = codes.open_codes(one, pieces_one, layout_one, lists_one, DIMS)
    started = time.perf_counter()
    in_list = codes.assemble(one, in_pieces, pieces_one)
    assembled_s = time.perf_counter() - started
    del in_pieces, pieces_one  # (their mappings: pages still mapped cannot be dropped from the page cache)

    log("  revision 2: a 1 % change, on revision 1's codes as its base ...")
    two = revisions / "two"
    files_two = [*first_files, *new_files]
    live_one = np.setdiff1d(np.arange(rows), sold)
    lists_two = np.concatenate([lists_one[live_one], lists_new])
    drop_cached(files_two)
    started = time.perf_counter()
    pieces_two = _revision(two, files_two, [*removed, *[np.empty(0, np.int64)] * len(new_files)])
    assert codes.link_base(two, [one], [_digest(f) for f in files_two], [len(live) for _, live in pieces_two.parts])
    layout_two = _layout(lists_two, lists_count)
    on_base = codes.open_codes(two, pieces_two, layout_two, lists_two, DIMS)
    opened_s = time.perf_counter() - started
    assert isinstance(on_base, codes.OnBase)
    drop_cached(files_two)  # (the digests above, which a real swap takes from the head, read them)
    on_base = codes.open_codes(two, pieces_two, layout_two, lists_two, DIMS)
    for probed, query in zip(probe_sets, queries):
        on_base.score_lists(probed, query)
    held = resident(files_two)
    unchanged = sum(held.get(str(f), 0) for f in first_files)
    fresh = sum(held.get(str(f), 0) for f in new_files)
    new_total = sum(f.stat().st_size for f in new_files)

    log("  scans, side by side ...")
    in_pieces = codes.open_codes(  # revision 1 again, before its codes were put together
        _copy_listing(one, revisions / "one-in-pieces"),
        _revision(revisions / "one-in-pieces", first_files, [np.empty(0, np.int64)] * len(first_files)),
        layout_one,
        lists_one,
        DIMS,
    )
    assert isinstance(in_pieces, codes.InPieces) and not isinstance(in_pieces, codes.OnBase)
    times = {name: [] for name in ("in list order", "on a base", IN_PIECES)}
    for _ in range(3):  # alternate rounds: the machine's noise spread over all three
        times["in list order"].append(_time(in_list, probe_sets, queries))
        times["on a base"].append(_time(on_base, probe_sets, queries))
        times[IN_PIECES].append(_time(in_pieces, probe_sets, queries))
    median = {name: float(np.median(values)) * 1000 for name, values in times.items()}
    scanned = float(np.mean([len(in_list.score_lists(p, q)[0]) for p, q in zip(probe_sets[:20], queries[:20])]))
    label = f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}k"
    log(f"  {median}; revision 1 put together in {assembled_s:.1f} s; revision 2 opened in {opened_s:.1f} s")
    return [
        Row(
            f"12: a swap at {label} codes (a 1 % change) on the earlier revision's codes as its base: the unchanged "
            "pieces' codes files read by the new revision's opening and 200 searches (page cache after)",
            f"the unchanged pieces' codes: {sum(f.stat().st_size for f in first_files) / 1e6:,.0f} MB",
            f"{unchanged / 1e6:,.1f} MB; the new pieces': {fresh / 1e6:,.1f} of {new_total / 1e6:,.1f} MB",
            "",
            "a swap loads only the new pieces",
            verdict(unchanged == 0),
        ),
        Row(
            f"12: scanning 96 lists' codes at {label} (about {scanned:,.0f} rows, one thread, p50 of 200, median of 3 "
            "rounds)",
            f"in list order (put together): {median['in list order']:.2f} ms",
            f"on a base with the new pieces: {median['on a base']:.2f} ms; in the pieces' files: "
            f"{median[IN_PIECES]:.2f} ms",
            f"{median['on a base'] / median['in list order']:.2f}×; {median[IN_PIECES] / median['in list order']:.2f}×",
            "(information)",
        ),
        Row(
            f"12: putting {label} codes together in list order (from the pieces' files, page cache warm); opening a "
            "revision on a base (its files out of the page cache)",
            "—",
            f"{assembled_s:.1f} s; {opened_s:.2f} s",
            "",
            "(information)",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(markdown(run(args.rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
