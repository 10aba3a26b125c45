"""Figure 11: a start on a mounted catalogue — how much of the revision the app reads before it answers its first query.

    python -m benchmarks.bench_mount                    # 200,000 products (the catalogue figure 9 makes; cached)
    python -m benchmarks.bench_mount --rows 1000000     # a million (figure 9's large catalogue, if made; else made)

The catalogue is figure 9's (benchmarks/bench_live.py: vectors grown as figure 8's, the model's 2,048-d, tiny JPEGs,
Kaggle-like metadata, the approximate index from 100k products), written in the Hub repo's layout as a push writes
it (`pieces.plan_push`, `pieces.write_piece`, the head last) into a plain folder that stands for the mounted volume.

Measured in a fresh process, after every file of the folder has been dropped from the page cache (sync, then
posix_fadvise DONTNEED): `live.MountSource(folder).first()` (the head, each piece's listing and index lists checked;
its vectors, index codes and pictures left to be checked as read), the snapshot opened with the approximate index
(its load checks 256 rows), and one query (the nearest 5 products of a vector near a catalogue product: the codes of
the lists it probes, then the candidates' vectors, each checked as read), then the pictures of its 5 results. (The
codes are put together only once the app has answered: not in this measure.) What it read is what the page cache
holds of the folder's files afterwards (`fincore`, pages resident: the kernel's readahead included), against the
revision's bytes (the head and every file it names). Side by side, the same for the check a Hub download gets (every
file hashed, every picture read: `lazy=False`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mounted import drop_cached, resident, revision_files, write_mount  # tests/ is on the path

from benchmarks import bench_live, data
from benchmarks.report import Row, markdown, verdict

TARGET = 0.10  # a start on a mounted 1M revision with the approximate index reads at most 10 % of its bytes


def start_and_ask(mount: str, cache: str, lazy: str) -> None:
    """In the measured process: a start on the mount, the first query, its pictures; prints what it did as JSON."""
    from fashion_search import live, pieces
    from fashion_search.snapshot import open_snapshot

    started = time.perf_counter()
    source = live.MountSource(mount, cache, arrival=0)
    if lazy == "no":  # the check a Hub download gets: every file hashed and every picture read
        original = pieces.assemble

        def full(*args, **kwargs):
            kwargs["lazy"] = False
            return original(*args[:5], **kwargs)

        pieces.assemble = full
    revision, bundle, images = source.first()
    loaded = time.perf_counter() - started

    class Model:  # the catalogue's model, as far as the search needs it (no forward pass is measured here)
        fingerprint = bundle.weights
        precision = bundle.precision

        def describe(self) -> dict:
            return dict(bundle.manifest["model"])

    snapshot = open_snapshot(Model(), bundle, images, revision=revision)
    opened = time.perf_counter() - started
    rng = np.random.default_rng(5)
    row = int(rng.integers(len(bundle.filenames)))
    query = bundle.embeddings[row] + rng.normal(0, 0.01, bundle.embeddings.shape[1]).astype(np.float32)
    query /= np.linalg.norm(query)
    (found,) = snapshot.searcher.matches(query[None, :], 5)
    pictures = [len(images.read(match.row)) for match in found]
    answered = time.perf_counter() - started
    print(
        json.dumps(
            {
                "loaded_s": loaded,
                "opened_s": opened,
                "answered_s": answered,
                "search": snapshot.info.search,
                "results": [match.filename for match in found],
                "pictures": pictures,
            }
        )
    )


def measure(mount: Path, lazy: bool, log=print) -> dict:
    files = revision_files(mount)
    paths = [mount / path for path in files]
    drop_cached(paths)
    before = sum(resident(paths).values())
    cache = tempfile.mkdtemp(prefix="bench-mount-")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_mount", "--measured", str(mount), cache, "yes" if lazy else "no"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    held = resident(paths)
    kinds: dict[str, list[int]] = {}
    for path, size in files.items():
        kind = _kind(path)
        read, total = kinds.setdefault(kind, [0, 0])
        kinds[kind] = [read + held.get(str(mount / path), 0), total + size]
    result |= {"before": before, "read": sum(held.values()), "total": sum(files.values()), "kinds": kinds}
    share = result["read"] / result["total"]
    parts = ", ".join(f"{kind} {read / 1e6:,.0f}/{total / 1e6:,.0f} MB" for kind, (read, total) in kinds.items())
    log(
        f"  {'checked as read' if lazy else 'every file checked'}: read {result['read'] / 1e6:,.0f} MB of "
        f"{result['total'] / 1e6:,.0f} MB ({share:.1%}); answered {result['answered_s']:.1f} s after the start; {parts}"
    )
    return result


def _kind(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if name.startswith(("lists-", "codes-")):
        return f"index {name.split('-')[0]}"
    return {"images.tar": "pictures", "vectors.npy": "vectors", "rows.json": "listings"}.get(name, "head and index")


def run(rows: int, log=print) -> list[Row]:
    (bundle_folder,) = bench_live.revisions(rows, 0, log)
    mount = write_mount(bundle_folder, data.CACHE / f"mount-{rows}-v1", log)
    lazy = measure(mount, True, log)
    full = measure(mount, False, log)
    share = lazy["read"] / lazy["total"]
    label = f"{rows // 1000}k" if rows < 1_000_000 else f"{rows // 1_000_000}M"
    parts = "; ".join(f"{kind} {read / total:.1%}" for kind, (read, total) in lazy["kinds"].items())
    return [
        Row(
            f"11: a start on a mounted {label} revision ({lazy['search'] or 'exact search'}), until the first "
            "query's answer and its 5 pictures: bytes read (page cache after, readahead included) of the revision's",
            f"every file checked at start (a download's check): {full['read'] / full['total']:.0%}, answered "
            f"{full['answered_s']:.0f} s after the start",
            f"{share:.1%} ({lazy['read'] / 1e6:,.0f} of {lazy['total'] / 1e6:,.0f} MB: {parts}), answered "
            f"{lazy['answered_s']:.0f} s after the start",
            f"{share / max(full['read'] / full['total'], 1e-9):.2f}×",
            f"≤ {TARGET:.0%} (at 1M)",
            verdict(share <= TARGET) if rows >= 1_000_000 else "",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--measured"]:
        start_and_ask(*argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    print(markdown(run(args.rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
