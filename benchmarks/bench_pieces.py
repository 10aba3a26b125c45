"""Figure 10: a shop's daily changes through the Hub in pieces — what each push sends, what a following app downloads.

    python -m benchmarks.bench_pieces                                # 44k products, 30 daily changes (~15 minutes)
    python -m benchmarks.bench_pieces --rows 1000000 --days 1 --dim 64   # a million products, one change

Each day is the issue's 1 % change: rows/200 products sold out at random places in the catalogue and rows/220 new
ones (220 and 200 at 44k), the kept products keeping their vectors as precompute.py keeps them. The bundle is pushed
with `hub.push_bundle` to the loopback Hub stand-in, which counts the bytes it receives and sends, and the new commit
is fetched with `hub.fetch_commit` into a cache that holds the day before's, as an app following the branch does.
Measured against the revision's bytes on the Hub (its head and every file the head names): what the push sent and
what the fetch downloaded, each day; all the pushes together, compaction included (the first, full push left out);
the files at head, the entries of the fullest folder and the files of the largest commit against the Hub's limits;
and each day the fetched revision's products against the bundle's (no sold-out product, no new one missing) and the
5 nearest products of 5 queries, exact search over the fetched revision against a brute force over the bundle.

The products are tiny synthetic JPEGs (a few hundred bytes; Kaggle's are 20-30 KB) with 2,048-d vectors (8 KB each):
the vectors are most of the bytes, as Kaggle's pictures would be; a change's share of the bytes is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
from big_catalogue import FIRST_ID, styles_row, tiny_jpeg  # tests/ is on the path (benchmarks/__init__.py)
from hub_standin import HubStandIn

from benchmarks.report import Row, markdown, verdict
from fashion_search import pieces
from fashion_search.bundle import load_bundle, write_bundle

REPO = "shop/catalogue"
TOKEN = "bench-token"
SHARE_TARGET = 0.03  # a 1 % change: the push sends, and a following app downloads, at most 3 % of the revision
DAYS_TARGET = 1.0  # 30 daily changes together send at most the revision's bytes
LIMITS = {"files a commit": 100, "entries a folder": 10_000, "files a repo": 100_000}


def write_day(root: Path, ids: list[int], vectors: np.ndarray) -> Path:
    """The bundle of products `ids` (pictures `<id>.jpg`) with these vectors, written in place over the day before."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"{ident}.jpg" for ident in ids]
    for stale in {path.name for path in images.iterdir()} - set(names):
        (images / stale).unlink()
    for ident, name in zip(ids, names):
        if not (images / name).exists():
            (images / name).write_bytes(tiny_jpeg(ident))
    model = {"architecture": "bench", "weights": "random:0"}
    metadata = [styles_row(ident) for ident in ids]
    write_bundle(root, embeddings=vectors, filenames=names, metadata=metadata, model=model, preprocessing="bench")
    return root


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def nearest(vectors: np.ndarray, names: list[str], queries: np.ndarray, k: int = 5) -> list[list[str]]:
    """Brute force in float64 (|v|^2 - 2 v.q, the same order as the distance), 8,192 rows at a time: the names of the
    k nearest rows of each query."""
    queries = np.asarray(queries, dtype=np.float64)
    parts = []
    for start in range(0, len(vectors), 8192):
        block = np.asarray(vectors[start : start + 8192], dtype=np.float64)
        parts.append(np.einsum("ij,ij->i", block, block)[None, :] - 2 * (queries @ block.T))
    order = np.argsort(np.concatenate(parts, axis=1), axis=1, kind="stable")[:, :k]
    return [[names[row] for row in rows] for rows in order]


def run(rows: int, days: int, dim: int, seed: int = 0, log=print) -> tuple[list[Row], dict]:
    from fashion_search.hub import fetch_commit, push_bundle
    from fashion_search.images import load_catalogue
    from fashion_search.index import NeighbourIndex
    from fashion_search.search import DEFAULT_K

    rng = np.random.default_rng(seed)
    work = Path(tempfile.mkdtemp(prefix="bench-pieces-"))
    os.environ["HF_TOKEN"] = TOKEN
    ids = list(range(FIRST_ID, FIRST_ID + rows))
    vectors = unit_rows(rng, rows, dim)
    local = write_day(work / "bundle", ids, vectors)
    next_id = FIRST_ID + rows
    daily, results = [], {"rows": rows, "days": days, "dim": dim}
    try:
        with HubStandIn(work / "hub", token=TOKEN) as hub:
            started = time.perf_counter()
            first = push_bundle(local, REPO, endpoint=hub.url)
            log(f"figure 10: {rows:,} products pushed in {time.perf_counter() - started:.0f} s")
            fetch_commit(REPO, first.commit_sha, cache_dir=work / "app", endpoint=hub.url)
            first_bytes = pieces_bytes(hub, first.commit_sha)
            sent_total = 0
            for day in range(1, days + 1):
                sold = set(rng.choice(len(ids), rows // 200, replace=False).tolist())
                kept = [i for i in range(len(ids)) if i not in sold]
                new = list(range(next_id, next_id + rows // 220))
                next_id += len(new)
                ids = [ids[i] for i in kept] + new
                before = np.asarray(load_bundle(local).embeddings)[kept]  # a copy: the file is written anew
                vectors = np.concatenate([before, unit_rows(rng, len(new), dim)])
                write_day(local, ids, vectors)
                uploads, started = len(hub.uploads), time.perf_counter()
                pushed = push_bundle(local, REPO, endpoint=hub.url)
                push_s = time.perf_counter() - started
                sent = sum(size for _, size in hub.uploads[uploads:])
                downloads, started = len(hub.downloads), time.perf_counter()
                folder = fetch_commit(REPO, pushed.commit_sha, cache_dir=work / "app", endpoint=hub.url)
                fetch_s = time.perf_counter() - started
                fetched = sum(size for _, size in hub.downloads[downloads:])
                size = pieces_bytes(hub, pushed.commit_sha)
                sent_total += sent
                head = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, pushed.commit_sha), REPO)
                bundle, _ = load_catalogue(folder)
                names = [f"{ident}.jpg" for ident in ids]
                queries = unit_rows(rng, 5, dim)
                served = nearest(np.asarray(bundle.embeddings), bundle.filenames, queries)
                expected = nearest(vectors, names, queries)
                found = NeighbourIndex(bundle.embeddings).search(queries, DEFAULT_K)
                exact = [[bundle.filenames[n.row] for n in neighbours] for neighbours in found]
                record = {
                    "day": day,
                    "sent": sent,
                    "downloaded": fetched,
                    "revision": size,
                    "push_s": round(push_s, 1),
                    "fetch_s": round(fetch_s, 1),
                    "pieces": len(head.pieces),
                    "files_at_head": len(hub.file_sizes(REPO, pushed.commit_sha)),
                    "products_right": sorted(bundle.filenames) == sorted(names),
                    "nearest_right": served == expected and exact == expected,
                }
                daily.append(record)
                log(
                    f"  day {day}: sent {sent / size:.2%}, downloaded {fetched / size:.2%} of {size / 1e6:.0f} MB "
                    f"(push {push_s:.0f} s, fetch {fetch_s:.0f} s); {len(head.pieces)} pieces, "
                    f"{record['files_at_head']} files; products {'right' if record['products_right'] else 'WRONG'}, "
                    f"nearest {'right' if record['nearest_right'] else 'WRONG'}"
                )
            commits = max(commit["operations"] for commit in hub.commit_log)
            folder_entries = hub.max_folder_entries(REPO)
            repo_files = hub.file_count(REPO)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results |= {
        "first_push_bytes": first_bytes,
        "daily": daily,
        "largest_commit": commits,
        "max_folder": folder_entries,
    }
    return report(results, sent_total, repo_files), results


def pieces_bytes(hub: HubStandIn, sha: str) -> int:
    """The revision's bytes: its head and every file the head names."""
    head = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, sha), REPO)
    sizes = hub.file_sizes(REPO, sha)
    return sum(sizes[path] for path in [pieces.HEAD, *head.files()])


def report(results: dict, sent_total: int, repo_files: int) -> list[Row]:
    daily, rows = results["daily"], results["rows"]
    size = daily[-1]["revision"]
    first = daily[0]
    label = f"10: {rows:,} products ({results['dim']}-d), a 1 % change ({rows // 200:,} sold out, {rows // 220:,} new)"
    out = [
        Row(
            f"{label}: the push sends; a following app downloads (first change)",
            f"the revision: {first['revision'] / 1e6:,.0f} MB",
            f"{first['sent'] / first['revision']:.2%}; {first['downloaded'] / first['revision']:.2%}",
            "",
            "≤ 3 %; ≤ 3 %",
            verdict(max(first["sent"], first["downloaded"]) <= SHARE_TARGET * first["revision"]),
        )
    ]
    if len(daily) > 1:
        worst_sent = max(day["sent"] / day["revision"] for day in daily)
        worst_down = max(day["downloaded"] / day["revision"] for day in daily)
        out += [
            Row(
                f"10: … {len(daily)} such changes in a row: the worst day's push; download",
                "—",
                f"{worst_sent:.2%}; {worst_down:.2%}",
                "",
                "(information)",
            ),
            Row(
                f"10: … all {len(daily)} pushes together, compaction included",
                f"the revision: {size / 1e6:,.0f} MB",
                f"{sent_total / 1e6:,.0f} MB",
                f"{sent_total / size:.2f}×",
                "≤ 1.0×",
                verdict(sent_total <= DAYS_TARGET * size),
            ),
        ]
    most_pieces = max(day["pieces"] for day in daily)
    most_files = max(day["files_at_head"] for day in daily)
    out += [
        Row(
            "10: … the Hub's limits: files of the largest commit; entries of the fullest folder; files in the repo",
            "100; 10,000; 100,000",
            f"{results['largest_commit']}; {results['max_folder']}; {repo_files} (at most {most_pieces} pieces, "
            f"{most_files} files at a head)",
            "",
            "within",
            verdict(results["largest_commit"] <= 100 and results["max_folder"] < 10_000 and repo_files < 100_000),
        ),
        Row(
            "10: … each fetched revision: its products are the bundle's; the 5 nearest of 5 queries (exact search over "
            "the fetched revision, and brute force over it) are the brute force's over the bundle",
            f"{len(daily)} revisions",
            f"{sum(day['products_right'] for day in daily)} right; {sum(day['nearest_right'] for day in daily)} right",
            "",
            "all",
            verdict(all(day["products_right"] and day["nearest_right"] for day in daily)),
        ),
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=44_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(f"load average before: {os.getloadavg()}")
    rows, results = run(args.rows, args.days, args.dim, log=log)
    log(f"load average after: {os.getloadavg()}")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
