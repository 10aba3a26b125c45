"""Figure 6: the Hub at Kaggle's size — push and fetch of a 44k-product bundle through the loopback Hub stand-in.

Counted: files in the repo, commits and files per commit, entries per folder, requests (the resolver requests the
Hub rate-limits among them), bytes sent, seconds. The reference is the layout before shards, one file per image
(`upload_folder` of the bundle, `snapshot_download` of the revision), measured on a tenth of the catalogue: its
counts grow with the number of products, so it is shown per 4,400 products and multiplied out (labelled so).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

from big_catalogue import grown_copy  # tests/ is on the path (benchmarks/__init__.py)
from hub_standin import HubStandIn

from benchmarks import data
from benchmarks.report import Row

TOKEN = "bench-token"
ANONYMOUS_PER_5_MIN = 3000  # the Hub's resolver budget for an anonymous caller (a public Space without HF_TOKEN)


def run(ctx) -> list[Row]:
    from huggingface_hub import HfApi, snapshot_download

    from fashion_search.bundle import load_bundle
    from fashion_search.files import sha256_file
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
            pushed = push_bundle(catalogue, "bench/catalogue", endpoint=hub.url)
            push_s = time.perf_counter() - started
            commits = list(hub.commit_log)
            sent = sum(size for _, size in hub.uploads)
            files = hub.file_count("bench/catalogue")

            log("figure 6: fetch it into an empty cache ...")
            mark = len(hub.requests)
            started = time.perf_counter()
            folder = fetch_bundle(pushed.catalogue_value, cache_dir=work / "cache", endpoint=hub.url)
            fetch_s = time.perf_counter() - started
            requests = hub.requests[mark:]
            resolver = hub.resolver_requests(since=mark)
            assert len(load_bundle(folder, verify_images=False).filenames) == ctx.rows

            mark = len(hub.requests)
            started = time.perf_counter()
            fetch_bundle(pushed.catalogue_value, cache_dir=work / "cache", endpoint=hub.url)
            again_s, again_requests = time.perf_counter() - started, len(hub.requests) - mark

            log("figure 6: 100 products more: push and fetch ...")
            grown = grown_copy(catalogue, work / "grown", extra=100)
            mark_uploads, mark_commits = len(hub.uploads), len(hub.commit_log)
            started = time.perf_counter()
            grown_push = push_bundle(grown, "bench/catalogue", endpoint=hub.url)
            grow_push_s = time.perf_counter() - started
            array = "lfs:" + sha256_file(grown / "embeddings.npy")
            shard_sent = [(p, s) for p, s in hub.uploads[mark_uploads:] if p.startswith("lfs:") and p != array]
            shard_total = len(json.loads(hub.files("bench/catalogue")["shards.json"])["shards"])
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
    windows = len(resolver) / ANONYMOUS_PER_5_MIN
    old_windows = old_resolver * scale / ANONYMOUS_PER_5_MIN
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
            f"{hub.max_folder_entries('bench/catalogue')}",
            "",
            "< 10,000",
            "met" if hub.max_folder_entries("bench/catalogue") < 10_000 else "NOT met",
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
            f"{len(resolver)}, {len(requests)} ({windows:.3f} of one window)",
            "",
            "a few dozen",
            "met" if len(resolver) <= 48 else "NOT met",
        ),
        Row(
            "6: … seconds (download, unpack, check every image)",
            f"{old_fetch_s:.1f} s per {tenth:,} products",
            f"{fetch_s:.1f} s",
            "",
            "(information)",
        ),
        Row(
            "6: restart with the revision already unpacked (persistent storage)",
            "—",
            f"{again_requests} requests, {again_s * 1e3:.0f} ms",
            "",
            "no unpacking",
            "met" if again_requests == 0 else "NOT met",
        ),
        Row(
            "6: 100 products more: push sends",
            "—",
            f"{len(shard_sent)} of {shard_total} shards "
            f"({sum(s for _, s in shard_sent) / 1e6:.2f} MB) and embeddings.npy, {grow_push_s:.1f} s",
            "",
            "only the changed shards",
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
