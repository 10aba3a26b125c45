"""The Hub at Kaggle's size: a 44k-product catalogue pushed and served through the loopback Hub stand-in, against
the Hub's published limits (files per commit and per repo, entries per folder, resolver requests)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_runner import ROOT, AppProcess, app_env, free_port
from big_catalogue import FIRST_ID, KAGGLE_ROWS, grown_copy, write_catalogue_bundle
from conftest import draw_product, reference_top_k
from gradio_client import Client, handle_file
from hub_standin import HubError, HubStandIn

from fashion_search import pieces
from fashion_search.bundle import load_bundle
from fashion_search.hub import PIECES_PER_COMMIT, push_bundle

pytestmark = pytest.mark.slow  # a 44k-product catalogue through a Hub stand-in

REPO = "shop/kaggle-catalogue"
TOKEN = "hf_scale_token"
# The Hub's limits (Hub docs, "Repository limitations and recommendations", "Hub rate limits", September 2025).
MAX_FILES_PER_COMMIT = 100
MAX_FILES_PER_REPO = 100_000
MAX_FOLDER_ENTRIES = 10_000
FEW_DOZEN_REQUESTS = 48  # what "a few dozen" resolver requests means here (anonymous: 3,000 per 5 minutes)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with HubStandIn(tmp_path_factory.mktemp("hub"), token=TOKEN) as standin:
        yield standin


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, weights_file):
    """44k products made for the test weights (so the app accepts them), vectors synthetic."""
    from fashion_search.embedder import MODEL_DESCRIPTION
    from fashion_search.files import sha256_file
    from fashion_search.imaging import PREPROCESSING_ID

    model = {**MODEL_DESCRIPTION, "weights": f"sha256:{sha256_file(weights_file)}"}
    root = tmp_path_factory.mktemp("kaggle") / "bundle"
    ids = range(FIRST_ID, FIRST_ID + KAGGLE_ROWS)
    return write_catalogue_bundle(root, ids, model=model, preprocessing=PREPROCESSING_ID, dim=2048)


def lfs_objects(uploads) -> set[str]:
    return {path for path, _ in uploads if path.startswith("lfs:")}


@pytest.fixture(scope="module")
def pushed(hub, catalogue, tmp_path_factory):
    """`precompute.py --push-to-hub` killed (SIGKILL) as its second commit arrives, then run again to the end."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path_factory.mktemp("hf"))}
    command = [sys.executable, str(ROOT / "precompute.py"), "--out", str(catalogue), "--push-to-hub", REPO, "--quiet"]
    killed = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kill_at_second_commit(number: int) -> None:
        if number == 2:
            killed.send_signal(signal.SIGKILL)
            raise HubError(503, "the pushing process was killed")

    hub.before_commit = kill_at_second_commit
    killed.communicate(timeout=600)
    hub.before_commit = None
    first = {"returncode": killed.returncode, "commits": len(hub.commit_log), "uploads": list(hub.uploads)}
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    return {"first": first, "again": again, "uploads": hub.uploads[len(first["uploads"]) :], "sha": hub.head(REPO)}


def test_a_44k_push_keeps_to_the_hubs_limits(hub, pushed, catalogue):
    remote = hub.files(REPO)
    head = pieces.parse_head(remote[pieces.HEAD], REPO)

    assert head.count == KAGGLE_ROWS and len(head.pieces) == 6  # pieces of at most 8,192 products
    assert len(remote) <= 3 * len(head.pieces) + 3  # 3 files a piece, the head, the card, .gitattributes
    assert hub.file_count(REPO) <= MAX_FILES_PER_REPO
    assert max(commit["operations"] for commit in hub.commit_log) <= MAX_FILES_PER_COMMIT
    assert hub.max_folder_entries(REPO) < MAX_FOLDER_ENTRIES
    lines = pushed["again"].stdout.splitlines()
    assert f"Set this in the Space's variables: FASHION_CATALOG={REPO}@{pushed['sha']}" in lines
    preload = lines[lines.index("preload_from_hub:") + 1]
    entry = push_bundle(catalogue, REPO, endpoint=hub.url, token=TOKEN).preload_entry  # unchanged: no new commit
    assert preload == f"  - {entry}" and entry.endswith(f" {pushed['sha']}")
    assert set(entry.split(" ")[1].split(",")) == {
        name for name in remote if name not in (".gitattributes", "README.md")
    }


def test_a_push_killed_half_way_resumes_without_sending_a_piece_twice(hub, pushed, catalogue):
    first = pushed["first"]
    assert first["returncode"] == -signal.SIGKILL and first["commits"] == 1  # the first commit of pieces landed
    shard_objects = {
        "lfs:" + hashlib.sha256(content).hexdigest()
        for path, content in hub.files(REPO).items()
        if path.endswith(".tar")
    }
    sent_before_the_kill = lfs_objects(first["uploads"]) & shard_objects
    assert len(sent_before_the_kill) == min(len(shard_objects), PIECES_PER_COMMIT)  # the first commit's pieces

    sent_again = lfs_objects(pushed["uploads"]) & shard_objects
    assert not sent_again & sent_before_the_kill
    assert sent_before_the_kill | sent_again == shard_objects  # every shard was sent exactly once in all


def test_the_app_starts_from_an_empty_cache_after_a_few_dozen_resolver_requests(
    hub, pushed, catalogue, embedder, weights_file, tmp_path
):
    port = free_port()
    env = app_env(  # no HF_TOKEN: anonymous, as a public Space is
        tmp_path,
        FASHION_CATALOG=f"{REPO}@{pushed['sha']}",
        FASHION_WEIGHTS=str(weights_file),
        GRADIO_SERVER_PORT=str(port),
        HF_ENDPOINT=hub.url,
    )
    before = len(hub.requests)
    query = tmp_path / "query.jpg"
    draw_product(np.random.default_rng(7), size=(120, 160)).save(query)

    with AppProcess([], env, tmp_path / "app.log") as app:
        url = app.wait_ready(port)
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        gallery, listing = client.predict(handle_file(str(query)), api_name="/recommend")
        similar, similar_listing = client.predict(listing[0]["filename"], api_name="/similar")
        served = next((tmp_path / "hf" / "fashion-search" / "bundles").glob("*/*"))
        shard = next((tmp_path / "hf" / "hub").glob("datasets--*/snapshots/*/pieces/*/images.tar"))
        refused = [
            httpx.get(f"{url}gradio_api/file={path}").status_code
            for path in (shard, shard.resolve(), served / "manifest.json", served / "image-spans.npy")
        ]
    resolver = hub.resolver_requests(since=before)

    assert len(resolver) <= FEW_DOZEN_REQUESTS, resolver
    assert [row["filename"] for row in listing] == reference_top_k(embedder, load_bundle(catalogue), query)[0]
    # Each picture reaches the client byte for byte as the catalogue's image, from the shards.
    for items, rows in ((gallery, listing), (similar, similar_listing)):
        assert len(items) == len(rows) == 5
        for item, row in zip(items, rows):
            assert Path(item["image"]).read_bytes() == (catalogue / "images" / row["filename"]).read_bytes()
    assert refused == [403] * 4  # Gradio's file route serves none of the revision's files
    # One copy of the images and the vectors: the download, and a folder with the revision's names and metadata put
    # together from its pieces, the list of the pieces' vectors and where each image lies, no images/, a few dozen
    # files in all.
    assert (
        served.name == pushed["sha"] and not (served / "images").exists() and not (served / "embeddings.npy").exists()
    )
    size, files = hub_disk_use(tmp_path / "hf")
    on_hub = sum(len(content) for path, content in hub.files(REPO, pushed["sha"]).items() if path != "README.md")
    assert size <= 1.2 * on_hub and files <= 100, (size, on_hub, files)


def hub_disk_use(root: Path) -> tuple[int, int]:
    """(bytes, files) of the Hub catalogue's caches under root (the keras and gradio ones left out), hard links once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for part in ("hub", "fashion-search"):
        for path in (root / part).rglob("*"):
            info = path.lstat()
            if path.is_file() and not path.is_symlink() and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                size += info.st_size
    return size, len(seen)


def test_adding_100_products_sends_one_small_piece(hub, pushed, catalogue, tmp_path):
    grown = grown_copy(catalogue, tmp_path / "grown", extra=100)
    before_files, uploads_before = hub.files(REPO), len(hub.uploads)

    result = push_bundle(grown, REPO, endpoint=hub.url, token=TOKEN)

    after_files = hub.files(REPO, result.commit_sha)
    head = pieces.parse_head(after_files[pieces.HEAD], REPO)
    (new,) = [piece for piece in head.pieces if piece.path(pieces.TAR) not in before_files]
    assert new.rows == 100 and head.count == KAGGLE_ROWS + 100
    sent = sum(size for _, size in hub.uploads[uploads_before:])
    piece_bytes = sum(len(after_files[path]) for path in new.files)
    small = len(after_files[pieces.HEAD]) + len(after_files["README.md"])
    assert sent == piece_bytes + small  # the new piece, the head and the card: nothing else
    assert sent < sum(len(after_files[path]) for path in head.files()) / 100
