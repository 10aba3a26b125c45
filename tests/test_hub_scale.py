"""The Hub at Kaggle's size: a 44k-product catalogue pushed and served through the loopback Hub stand-in, against
the Hub's published limits (files per commit and per repo, entries per folder, resolver requests)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from app_runner import ROOT, AppProcess, app_env, free_port
from big_catalogue import FIRST_ID, KAGGLE_ROWS, grown_copy, write_catalogue_bundle
from conftest import draw_product, reference_top_k
from gradio_client import Client, handle_file
from hub_standin import HubError, HubStandIn

from fashion_search import hub as hub_module
from fashion_search.bundle import load_bundle
from fashion_search.hub import push_bundle

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
    shards = json.loads(remote["shards.json"])["shards"]

    assert sum(shard["count"] for shard in shards) == KAGGLE_ROWS
    assert len(remote) <= 40  # ~11 shards + the data files, the shard list, the card, .gitattributes
    assert hub.file_count(REPO) <= MAX_FILES_PER_REPO
    assert max(commit["operations"] for commit in hub.commit_log) <= MAX_FILES_PER_COMMIT
    assert hub.max_folder_entries(REPO) < MAX_FOLDER_ENTRIES
    assert (
        pushed["again"].stdout.splitlines()[-1]
        == f"Set this in the Space's variables: FASHION_CATALOG={REPO}@{pushed['sha']}"
    )


def test_a_push_killed_half_way_resumes_without_sending_a_shard_twice(hub, pushed, catalogue):
    first = pushed["first"]
    assert first["returncode"] == -signal.SIGKILL and first["commits"] == 1  # the first commit of shards landed
    shard_objects = {
        "lfs:" + hashlib.sha256(content).hexdigest()
        for path, content in hub.files(REPO).items()
        if path.endswith(".tar")
    }
    assert len(shard_objects) > hub_module.SHARDS_PER_COMMIT  # so the push needed more than one commit of shards
    sent_before_the_kill = lfs_objects(first["uploads"]) & shard_objects
    assert len(sent_before_the_kill) >= hub_module.SHARDS_PER_COMMIT

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
        _, listing = Client(url, verbose=False).predict(handle_file(str(query)), api_name="/recommend")
    resolver = hub.resolver_requests(since=before)

    assert len(resolver) <= FEW_DOZEN_REQUESTS, resolver
    assert [row["filename"] for row in listing] == reference_top_k(embedder, load_bundle(catalogue), query)[0]
    served = next((tmp_path / "hf" / "fashion-search" / "bundles").glob("*/*"))
    assert served.name == pushed["sha"] and len(list((served / "images").iterdir())) == KAGGLE_ROWS


def test_adding_100_products_sends_only_the_shards_they_fall_in(hub, pushed, catalogue, tmp_path):
    grown = grown_copy(catalogue, tmp_path / "grown", extra=100)
    before_files, uploads_before = hub.files(REPO), len(hub.uploads)

    result = push_bundle(grown, REPO, endpoint=hub.url, token=TOKEN)

    after_files = hub.files(REPO, result.commit_sha)
    old = {path: content for path, content in before_files.items() if path.endswith(".tar")}
    new = {path: content for path, content in after_files.items() if path.endswith(".tar")}
    changed = set(new) - set(old)
    assert 1 <= len(changed) <= 2 and len(new) - len(changed) >= len(old) - 2
    sent = [(path, size) for path, size in hub.uploads[uploads_before:] if path.startswith("lfs:")]
    shard_bytes = sum(size for path, size in sent if path[4:] in {hashlib.sha256(c).hexdigest() for c in new.values()})
    assert shard_bytes == sum(len(new[path]) for path in changed)  # the changed shards and nothing else
    assert shard_bytes < sum(map(len, new.values())) / 4
