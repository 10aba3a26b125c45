"""Figure 6: the Hub at Kaggle's size — push and fetch of a 44k-product bundle through the loopback Hub stand-in.

Counted: files in the repo, commits and files per commit, entries per folder, requests (the resolver requests the
Hub rate-limits among them), bytes sent, seconds, and what a start keeps on disk (bytes, hard links counted once,
and files) against the revision's bytes on the Hub. The reference is the layout before shards, one file per image
(`upload_folder` of the bundle, `snapshot_download` of the revision), measured on a tenth of the catalogue: its
counts grow with the number of products, so it is shown per 4,400 products and multiplied out (labelled so).

At a million products (not part of the suite: about half an hour and 15 GB of disk):

    python -m benchmarks.bench_hub --rows 1000000 [--dim 64]

builds a bundle of that many tiny synthetic JPEGs (a few hundred bytes each; Kaggle's are 20-30 KB), pushes it to the
stand-in (which keeps its files on disk) and measures a start from an empty cache: the fetch (download, every image
checked in the shards, the index written) and the catalogue's load, without the model. `--dim` makes the vectors
shorter than the model's 2,048 (8 GB at 1M rows) to spare the shared machine's memory; their file is downloaded and
hashed like any other, so only its size changes.
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

os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

from big_catalogue import grown_copy  # tests/ is on the path (benchmarks/__init__.py)
from hub_standin import HubStandIn

from benchmarks import data
from benchmarks.report import Row
from fashion_search import pieces

TOKEN = "bench-token"
ANONYMOUS_PER_5_MIN = 3000  # the Hub's resolver budget for an anonymous caller (a public Space without HF_TOKEN)
REPO = "bench/catalogue"


def disk_use(root: Path) -> tuple[int, int]:
    """(bytes allocated, files) under root, a file with several hard links counted once (as `du` does)."""
    seen, size = set(), 0
    for folder, _, names in os.walk(root):
        for name in names:
            info = os.lstat(os.path.join(folder, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                size += info.st_blocks * 512
    return size, len(seen)


def revision_bytes(hub: HubStandIn, revision: str) -> int:
    """The revision's bytes on the Hub, what the app downloads (the card and .gitattributes left out)."""
    sizes = hub.file_sizes(REPO, revision)
    return sum(size for path, size in sizes.items() if path not in ("README.md", ".gitattributes"))


def measure_start(hub: HubStandIn, value: str, cache: Path) -> dict:
    """A start from an empty cache: fetch_bundle, then the catalogue's load (load_catalogue), without the model."""
    from fashion_search.hub import fetch_bundle
    from fashion_search.images import load_catalogue

    mark = len(hub.requests)
    started = time.perf_counter()
    folder = fetch_bundle(value, cache_dir=cache, hub_cache=cache / "hub", endpoint=hub.url)
    fetched = time.perf_counter()
    bundle, images = load_catalogue(folder)
    loaded = time.perf_counter()
    size, files = disk_use(cache)
    return {
        "folder": folder,
        "fetch_s": fetched - started,
        "load_s": loaded - fetched,
        "requests": len(hub.requests) - mark,
        "resolver": len(hub.resolver_requests(since=mark)),
        "bytes": size,
        "files": files,
        "rows": len(bundle.filenames),
        "first_image": images.read(0),
    }


def run(ctx) -> list[Row]:
    from huggingface_hub import HfApi, snapshot_download

    from fashion_search.hub import fetch_bundle, push_bundle

    log = ctx.log
    catalogue = data.big_bundle(ctx.rows, ctx.weights, log=log)
    work = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    os.environ["HF_TOKEN"] = TOKEN
    rows: list[Row] = []
    try:
        with HubStandIn(work / "hub", token=TOKEN) as hub:
            log(f"figure 6: push {ctx.rows:,} products (shards) ...")
            started = time.perf_counter()
            pushed = push_bundle(catalogue, REPO, endpoint=hub.url)
            push_s = time.perf_counter() - started
            commits = list(hub.commit_log)
            sent = sum(size for _, size in hub.uploads)
            files = hub.file_count(REPO)
            on_hub = revision_bytes(hub, pushed.commit_sha)

            log("figure 6: fetch it into an empty cache ...")
            start = measure_start(hub, pushed.catalogue_value, work / "cache")
            first = (catalogue / "images" / "10000.jpg").read_bytes()
            assert start["rows"] == ctx.rows and start["first_image"] == first

            mark = len(hub.requests)
            started = time.perf_counter()
            fetch_bundle(pushed.catalogue_value, cache_dir=work / "cache", endpoint=hub.url)
            again_s, again_requests = time.perf_counter() - started, len(hub.requests) - mark

            log("figure 6: a start from a revision preloaded into huggingface_hub's cache (preload_from_hub) ...")
            _, patterns, _ = pushed.preload_entry.split(" ")
            snapshot_download(
                REPO,
                repo_type="dataset",
                revision=pushed.commit_sha,
                allow_patterns=patterns.split(","),
                cache_dir=work / "preloaded",
                endpoint=hub.url,
            )
            mark = len(hub.requests)
            started = time.perf_counter()
            fetch_bundle(pushed.catalogue_value, cache_dir=work / "app", hub_cache=work / "preloaded", endpoint=hub.url)
            preloaded_s, preloaded_requests = time.perf_counter() - started, len(hub.requests) - mark

            log("figure 6: 100 products more: push and fetch ...")
            grown = grown_copy(catalogue, work / "grown", extra=100)
            mark_uploads = len(hub.uploads)
            started = time.perf_counter()
            grown_push = push_bundle(grown, REPO, endpoint=hub.url)
            grow_push_s = time.perf_counter() - started
            shard_sent = [(p, s) for p, s in hub.uploads[mark_uploads:] if p.startswith("lfs:")]
            shard_total = len(pieces.parse_head(hub.read_file(REPO, pieces.HEAD), REPO).pieces)
            mark = len(hub.requests)
            started = time.perf_counter()
            fetch_bundle(grown_push.catalogue_value, cache_dir=work / "cache", endpoint=hub.url)
            grow_fetch_s = time.perf_counter() - started
            grow_gets = [r for r in hub.resolver_requests(since=mark) if r[0] == "GET"]

            log("figure 6: reference, one file per image, on a tenth of the catalogue ...")
            tenth = ctx.rows // 10
            small = grown_copy(catalogue, work / "tenth", keep=tenth)
            api = HfApi(endpoint=hub.url)
            api.create_repo("bench/per-image", repo_type="dataset")
            mark_commits = len(hub.commit_log)
            started = time.perf_counter()
            old = api.upload_folder(repo_id="bench/per-image", repo_type="dataset", folder_path=small)
            old_push_s = time.perf_counter() - started
            old_commits = hub.commit_log[mark_commits:]
            mark = len(hub.requests)
            started = time.perf_counter()
            snapshot_download(
                "bench/per-image", repo_type="dataset", revision=old.oid, local_dir=work / "old", endpoint=hub.url
            )
            old_fetch_s = time.perf_counter() - started
            old_resolver = len(hub.resolver_requests(since=mark))
            old_folder_entries = hub.max_folder_entries("bench/per-image")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    scale = ctx.rows / tenth
    k = f"{ctx.rows // 1000}k"
    windows = start["resolver"] / ANONYMOUS_PER_5_MIN
    old_windows = old_resolver * scale / ANONYMOUS_PER_5_MIN
    kept = start["bytes"] / on_hub
    rows += [
        Row(
            f"6: Hub push of {k} products: files in the repo",
            f"one per image: {old_commits[0]['operations']:,} "
            f"per {tenth:,} products (×{scale:.0f}: {old_commits[0]['operations'] * scale:,.0f})",
            f"{files}",
            "",
            "≤ ~100 files",
            "met" if files <= 110 else "NOT met",
        ),
        Row(
            "6: … commits; most files in one commit",
            f"{len(old_commits)}; {old_commits[0]['operations']:,} per {tenth:,} products",
            f"{len(commits)}; {max(c['operations'] for c in commits)}",
            "",
            "every commit ≤ 100 files",
            "met" if max(c["operations"] for c in commits) <= 100 else "NOT met",
        ),
        Row(
            "6: … most entries in one folder (over every commit)",
            f"{old_folder_entries:,} per {tenth:,} products",
            f"{hub.max_folder_entries(REPO)}",
            "",
            "< 10,000",
            "met" if hub.max_folder_entries(REPO) < 10_000 else "NOT met",
        ),
        Row(
            "6: … seconds and MB sent (stand-in on loopback)",
            f"{old_push_s:.1f} s per {tenth:,} products",
            f"{push_s:.1f} s, {sent / 1e6:.0f} MB",
            "",
            "(information)",
        ),
        Row(
            "6: fetch from an empty cache (a Space's first start): resolver requests, all requests",
            f"{old_resolver:,} per {tenth:,} products (×{scale:.0f}: {old_resolver * scale:,.0f}, "
            f"{old_windows:.0f} anonymous 5-minute windows)",
            f"{start['resolver']}, {start['requests']} ({windows:.3f} of one window)",
            "",
            "a few dozen",
            "met" if start["resolver"] <= 48 else "NOT met",
        ),
        Row(
            "6: … seconds: download and check every image in the shards; then load the catalogue (no model)",
            f"{old_fetch_s:.1f} s per {tenth:,} products (download only)",
            f"{start['fetch_s']:.1f} s; {start['load_s']:.1f} s",
            "",
            "(information)",
        ),
        Row(
            "6: … kept on disk for the revision (hard links once): bytes, files; the revision on the Hub",
            "—",
            f"{start['bytes'] / 1e6:.0f} MB in {start['files']} files; {on_hub / 1e6:.0f} MB",
            f"{kept:.2f}×",
            "≤ 1.2× the Hub's bytes, files not growing with the products",
            "met" if kept <= 1.2 and start["files"] < 100 else "NOT met",
        ),
        Row(
            "6: restart with the revision's folder there (persistent storage)",
            "—",
            f"{again_requests} requests, {again_s * 1e3:.0f} ms",
            "",
            "no request, nothing read again",
            "met" if again_requests == 0 else "NOT met",
        ),
        Row(
            "6: start from a revision preloaded at build time (preload_from_hub)",
            "—",
            f"{preloaded_requests} requests, {preloaded_s:.1f} s (every image checked in the shards)",
            "",
            "no request",
            "met" if preloaded_requests == 0 else "NOT met",
        ),
        Row(
            "6: 100 products more: push sends",
            "—",
            f"{len(shard_sent)} large files ({sum(s for _, s in shard_sent) / 1e6:.2f} MB: a new piece's images and "
            f"vectors; {shard_total} pieces at head) and the head, {grow_push_s:.1f} s",
            "",
            "only the new products' piece",
            "met" if len(shard_sent) <= 2 else "NOT met",
        ),
        Row(
            "6: … fetch of the new revision with the old one cached",
            "—",
            f"{len(grow_gets)} downloads, {grow_fetch_s:.1f} s",
            "",
            "(information)",
        ),
    ]
    return rows


def run_large(rows: int, dim: int, work: Path, log=print) -> dict:
    """Push a bundle of `rows` tiny images to the stand-in and start from an empty cache; the measurements."""
    from big_catalogue import FIRST_ID, write_catalogue_bundle

    from fashion_search.embedder import MODEL_DESCRIPTION
    from fashion_search.hub import push_bundle
    from fashion_search.imaging import PREPROCESSING_ID

    source = work / f"bundle-{rows}-{dim}"
    if not (source / "manifest.json").is_file():
        log(f"writing a {rows:,}-product bundle ({dim}-d vectors, tiny JPEGs) in {source} ...")
        started = time.perf_counter()
        ids = range(FIRST_ID, FIRST_ID + rows)
        model = {**MODEL_DESCRIPTION, "weights": "random:0"}
        write_catalogue_bundle(source, ids, model=model, preprocessing=PREPROCESSING_ID, dim=dim)
        log(f"  {time.perf_counter() - started:.0f} s")
    os.environ["HF_TOKEN"] = TOKEN
    shutil.rmtree(work / "hub", ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    with HubStandIn(work / "hub", token=TOKEN) as hub:
        log("push ...")
        started = time.perf_counter()
        pushed = push_bundle(source, REPO, endpoint=hub.url)
        push_s = time.perf_counter() - started
        log(f"  {push_s:.0f} s; start from an empty cache ...")
        start = measure_start(hub, pushed.catalogue_value, work / "cache")
        on_hub = revision_bytes(hub, pushed.commit_sha)
        hub_files = len(hub.file_sizes(REPO, pushed.commit_sha))
    assert start["rows"] == rows and start["first_image"] == (source / "images" / f"{FIRST_ID}.jpg").read_bytes()
    start.pop("folder"), start.pop("first_image")
    return {"rows": rows, "dim": dim, "push_s": push_s, "on_hub": on_hub, "hub_files": hub_files, **start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Figure 6 at a large size: a start from the Hub stand-in.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64, help="vector length (the model's is 2048)")
    parser.add_argument("--work", type=Path, default=data.CACHE / "hub-large", help="where the bundle and caches go")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = run_large(args.rows, args.dim, args.work, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
