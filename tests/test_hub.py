"""fashion_search.hub against the loopback Hub stand-in, over real HTTP with the real huggingface_hub client."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import pytest
import yaml
from conftest import CHROMIUM, NEEDS_CHROMIUM, STANDIN_TOKEN, make_bundle
from huggingface_hub import HfApi, snapshot_download
from legacy_layout import push_shards_layout
from PIL import Image
from test_shards import device, link, sparse_gnu

from fashion_search import image_route, pieces, webapp
from fashion_search.bundle import BundleError
from fashion_search.hub import CatalogueNotFound, HubUnavailable, fetch_bundle, parse_hub_spec, push_bundle
from fashion_search.images import load_catalogue, media_type
from fashion_search.search import Match

REPO = "fashion-team/catalogue"
TOKEN = STANDIN_TOKEN  # the `hub` fixture's (conftest)


def image_bytes(seed: int, size: int = 700) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def served(root: Path) -> dict[str, tuple]:
    """What the app serves from a bundle folder, local or fetched: per product (file name), its picture's bytes as the
    app reads them (from images/ or from the pieces), its vector's bytes, its metadata and its source's digest; and
    the model the catalogue was made with."""
    bundle, images = load_catalogue(root)
    metadata = bundle.metadata or [None] * len(bundle.filenames)
    products = {
        name: (images.read(row), bundle.embeddings[row].tobytes(), metadata[row], bundle.sources[row])
        for row, name in enumerate(bundle.filenames)
    }
    return products | {"model": (bundle.manifest["model"], bundle.manifest["preprocessing"])}


@pytest.fixture
def bundle(tmp_path) -> Path:
    images = {"1163.jpg": image_bytes(1), "1164.jpg": image_bytes(2), "shoes/9.png": image_bytes(3)}
    return make_bundle(tmp_path / "bundle", images)


# ---------------------------------------------------------------- parse_hub_spec


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("owner/name", ("owner/name", None)),
        ("  Owner-1/my_cat.v2  ", ("Owner-1/my_cat.v2", None)),
        ("owner/name@main", ("owner/name", "main")),
        ("owner/name@" + "a" * 40, ("owner/name", "a" * 40)),
        ("owner/name@release--2", ("owner/name", "release--2")),
    ],
)
def test_parse_hub_spec_accepts_repo_and_revision(spec, expected):
    assert parse_hub_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "name",
        "owner/",
        "/name",
        "a/b/c",
        "owner/name@",
        "owner/name@x@y",
        "owner/na me",
        "owner/name@rev ision",
        "-owner/name",
        "owner/name-",
        "own--er/name",
        "owner/na..me",
        "https://huggingface.co/datasets/owner/name",
    ],
)
def test_parse_hub_spec_rejects_junk_with_the_expected_form(spec):
    with pytest.raises(ValueError, match=r"use OWNER/NAME or OWNER/NAME@REVISION"):
        parse_hub_spec(spec)


# ---------------------------------------------------------------- push


def test_push_creates_the_dataset_repo_and_returns_the_commit_to_pin(hub, bundle):
    result = push_bundle(bundle, REPO, endpoint=hub.url)

    assert result.created_commit is True
    assert result.commit_sha == hub.head(REPO)
    assert result.catalogue_value == f"{REPO}@{result.commit_sha}"
    assert hub.repo(REPO).repo_type == "dataset" and hub.repo(REPO).private is False
    remote = hub.files(REPO, result.commit_sha)
    head = pieces.parse_head(remote[pieces.HEAD], REPO)
    (piece,) = head.pieces
    assert (piece.rows, piece.removed, head.count) == (3, (), 3)
    assert sorted(remote) == sorted(
        [".gitattributes", "README.md", pieces.HEAD, *(piece.path(name) for name in ("images.tar", "vectors.npy"))]
        + [piece.path("rows.json")]
    )
    vectors = np.load(io.BytesIO(remote[piece.path("vectors.npy")]))
    np.testing.assert_array_equal(vectors, np.load(bundle / "embeddings.npy"))  # one piece: the bundle's order
    rows = json.loads(remote[piece.path("rows.json")])
    assert rows["filenames"] == json.loads((bundle / "filenames.json").read_text())
    assert rows["sources"] == json.loads((bundle / "sources.json").read_text())
    # The images and the vectors went the Hub's way for such files (LFS here; Xet on the Hub), the rest as git blobs.
    assert sorted(path for path, _ in hub.uploads if not path.startswith("lfs:")) == [
        "README.md",
        pieces.HEAD,
        piece.path("rows.json"),
    ]
    assert len([path for path, _ in hub.uploads if path.startswith("lfs:")]) == 2


def test_each_product_is_an_image_and_a_json_in_a_webdataset_shard(hub, bundle, tmp_path):
    images = {"1163.jpg": image_bytes(1), "a.b%c.jpg": image_bytes(2), "shoes/9.png": image_bytes(3)}
    make_bundle(bundle, images)
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    _, shard = shard_of(hub, result)

    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    assert [name for name, _ in members] == [
        "1163.jpg",
        "1163.json",
        "a%2Eb%25c.jpg",
        "a%2Eb%25c.json",
        "shoes/9.png",
        "shoes/9.json",
    ]
    assert members[2][1] == images["a.b%c.jpg"]
    assert json.loads(members[3][1]) == {"filename": "a.b%c.jpg", "id": "a.b%c"}


def test_the_dataset_card_describes_the_catalogue_and_names_the_pieces_images_as_its_data(hub, bundle):
    result = push_bundle(bundle, REPO, license="mit", endpoint=hub.url)
    card = hub.files(REPO, result.commit_sha)["README.md"].decode()

    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "mit" and front["size_categories"] == ["n<1K"]
    assert front["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "pieces/*/images.tar"}]}
    ]
    assert "webdataset" in front["tags"]
    assert f"FASHION_CATALOG={REPO}@<commit sha>" in card and "weights `random:0`" in card
    assert ("POST", "/api/validate-yaml") in hub.requests  # checked by the Hub before anything was uploaded


def test_datasets_load_dataset_reads_the_pushed_repo(hub, tmp_path):
    """What the Hub's Dataset Viewer and `load_dataset("OWNER/NAME")` read: the card's configs, the shards."""
    import datasets  # requirements-dev.txt

    root = tmp_path / "jpegs"
    pictures = {}
    for i, name in enumerate(["1163.jpg", "1164.jpg", "shoes/9.jpg"]):
        buffer = io.BytesIO()
        Image.new("RGB", (6, 8), (40 * i, 100, 200)).save(buffer, format="JPEG")
        pictures[name] = buffer.getvalue()
    make_bundle(root, pictures)
    result = push_bundle(root, REPO, endpoint=hub.url)
    repo = snapshot_download(
        REPO, repo_type="dataset", revision=result.commit_sha, local_dir=tmp_path / "repo", endpoint=hub.url
    )

    rows = datasets.load_dataset(repo, split="train")

    assert [row["json"]["filename"] for row in rows] == ["1163.jpg", "1164.jpg", "shoes/9.jpg"]
    assert [row["json"]["id"] for row in rows] == ["1163", "1164", "9"]
    assert rows[2]["jpg"].size == (6, 8)
    assert rows.features["jpg"] == datasets.Image()


def test_push_private_creates_a_private_repo_that_anonymous_callers_cannot_read(hub, bundle, tmp_path, monkeypatch):
    result = push_bundle(bundle, REPO, private=True, endpoint=hub.url)
    assert hub.repo(REPO).private is True

    monkeypatch.delenv("HF_TOKEN")  # a saved login, if any, is not the stand-in's token either
    with pytest.raises(CatalogueNotFound, match=rf"{REPO}@{result.commit_sha}.*HF_TOKEN"):
        fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "anon", endpoint=hub.url)
    fetched = fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "owner", token=TOKEN, endpoint=hub.url)
    assert served(fetched) == served(bundle)


def test_unchanged_repush_makes_no_commit(hub, bundle):
    first = push_bundle(bundle, REPO, endpoint=hub.url)
    commits = hub.commit_count(REPO)
    commit_posts = [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]]

    again = push_bundle(bundle, REPO, endpoint=hub.url)

    assert again.created_commit is False
    assert again.commit_sha == first.commit_sha and again.catalogue_value == first.catalogue_value
    assert hub.commit_count(REPO) == commits
    assert [r for r in hub.requests if r[0] == "POST" and "/commit/" in r[1]] == commit_posts


def test_push_of_a_changed_catalogue_removes_the_stale_pieces_one_push_later(hub, bundle, tmp_path):
    first = push_bundle(bundle, REPO, endpoint=hub.url)
    old = set(hub.files(REPO)) - {"README.md", ".gitattributes", pieces.HEAD}
    make_bundle(bundle, {"1163.jpg": image_bytes(1), "shoes/9.png": image_bytes(3)}, metadata=False)

    result = push_bundle(bundle, REPO, endpoint=hub.url)

    assert result.created_commit is True and first.commit_sha != result.commit_sha
    head = pieces.parse_head(hub.files(REPO)[pieces.HEAD], REPO)
    assert old <= set(hub.files(REPO))  # an app still reading the revision before keeps its files
    assert not old & set(head.files())  # new vectors and no metadata: every product is new, the old piece is gone
    assert served(fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "c", endpoint=hub.url)) == served(bundle)
    make_bundle(bundle, {"1163.jpg": image_bytes(1)}, metadata=False)
    push_bundle(bundle, REPO, endpoint=hub.url)
    assert not old & set(hub.files(REPO))


def test_push_to_a_repo_of_the_one_file_per_image_layout_replaces_it(hub, bundle, tmp_path):
    HfApi(endpoint=hub.url).create_repo(REPO, repo_type="dataset")
    HfApi(endpoint=hub.url).upload_folder(repo_id=REPO, repo_type="dataset", folder_path=bundle)  # the old push
    assert "images/1163.jpg" in hub.files(REPO)

    result = push_bundle(bundle, REPO, endpoint=hub.url)
    assert served(fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "c", endpoint=hub.url)) == served(bundle)
    assert "images/1163.jpg" in hub.files(REPO)  # kept for one more push
    make_bundle(bundle, {"1163.jpg": image_bytes(1)})
    push_bundle(bundle, REPO, endpoint=hub.url)
    assert not [path for path in hub.files(REPO) if path.startswith("images/") or path == "manifest.json"]


def test_a_revision_of_the_one_file_per_image_layout_still_fetches(hub, bundle, tmp_path):
    HfApi(endpoint=hub.url).create_repo(REPO, repo_type="dataset")
    old = HfApi(endpoint=hub.url).upload_folder(repo_id=REPO, repo_type="dataset", folder_path=bundle)

    folder = fetch_bundle(f"{REPO}@{old.oid}", cache_dir=tmp_path / "c", endpoint=hub.url)

    assert served(folder) == served(bundle)


def test_push_refuses_a_folder_that_is_not_a_finished_bundle(hub, tmp_path):
    (tmp_path / "half" / "images").mkdir(parents=True)
    (tmp_path / "half" / "embeddings.npy").write_bytes(b"x")
    with pytest.raises(ValueError, match="no manifest.json"):
        push_bundle(tmp_path / "half", REPO, endpoint=hub.url)
    with pytest.raises(ValueError, match="not a revision"):
        push_bundle(tmp_path / "half", f"{REPO}@main", endpoint=hub.url)
    assert hub.repos == {}


# ---------------------------------------------------------------- fetch


def test_fetch_in_a_fresh_cache_gives_the_pushed_bytes_as_plain_files(hub, bundle, tmp_path):
    result = push_bundle(bundle, REPO, endpoint=hub.url)

    folder = fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)

    assert folder == tmp_path / "cache" / "bundles" / "datasets--fashion-team--catalogue" / result.commit_sha
    assert served(folder) == served(bundle)  # and no .gitattributes: it is the Hub's, not the bundle's
    assert not [p for p in folder.rglob("*") if p.is_symlink()]


def disk_use(root: Path) -> tuple[int, int]:
    """(bytes, files) under root, a file with several hard links counted once (as `du` does)."""
    seen, size = set(), 0
    for path in root.rglob("*"):
        info = path.lstat()
        if path.is_file() and not path.is_symlink() and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            size += info.st_size
    return size, len(seen)


def test_a_fetched_revision_is_kept_once_in_a_few_files_and_its_images_are_read_from_the_shards(hub, tmp_path):
    images = {f"{i}.jpg": image_bytes(i, size=2000 + i) for i in range(300)}
    root = make_bundle(tmp_path / "big", images)
    result = push_bundle(root, REPO, endpoint=hub.url)
    remote = {path: content for path, content in hub.files(REPO, result.commit_sha).items() if path != "README.md"}
    on_hub = sum(map(len, remote.values()))

    folder = fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)

    size, files = disk_use(tmp_path / "cache")
    # huggingface_hub keeps a blob and a lock per file; the folder adds the revision's data files, put together from
    # its pieces, and two per piece saying it was checked: a few per file on the Hub, not per product
    assert size <= 1.2 * on_hub and files <= 2 * len(remote) + 10 < len(images)
    assert not (folder / "images").exists()
    assert served(folder) == served(root)


def test_fetch_follows_main_and_a_pinned_revision_stays_put_after_a_newer_push(hub, bundle, tmp_path):
    old = push_bundle(bundle, REPO, endpoint=hub.url)
    old_files = served(bundle)
    (bundle / "images" / "1164.jpg").unlink()
    make_bundle(bundle, {"1163.jpg": image_bytes(1), "shoes/9.png": image_bytes(4), "bags/7.jpg": image_bytes(5)})
    new = push_bundle(bundle, REPO, endpoint=hub.url)
    assert new.commit_sha != old.commit_sha
    cache = tmp_path / "cache"

    assert served(fetch_bundle(old.catalogue_value, cache_dir=cache, endpoint=hub.url)) == old_files
    latest = fetch_bundle(REPO, cache_dir=cache, endpoint=hub.url)
    assert latest.name == new.commit_sha and served(latest) == served(bundle)
    assert served(fetch_bundle(f"{REPO}@main", cache_dir=cache, endpoint=hub.url)) == served(bundle)
    # the pinned copy was not touched by fetching main into the same cache
    assert served(fetch_bundle(old.catalogue_value, cache_dir=cache, endpoint=hub.url)) == old_files


def test_the_cache_keeps_the_revision_fetched_and_the_one_used_before_it(hub, bundle, tmp_path):
    cache = tmp_path / "cache"
    pushed = []
    for seed in (10, 11, 12):
        make_bundle(bundle, {"1163.jpg": image_bytes(seed)})
        pushed.append((push_bundle(bundle, REPO, endpoint=hub.url), served(bundle)))
    folders = [fetch_bundle(result.catalogue_value, cache_dir=cache, endpoint=hub.url) for result, _ in pushed]

    assert sorted(folder.name for folder in folders[0].parent.iterdir()) == sorted(f.name for f in folders[1:])
    # going back to the previous one is served from the cache, even with the Hub gone; the oldest one is not there
    hub.stop()
    assert served(fetch_bundle(pushed[1][0].catalogue_value, cache_dir=cache, endpoint=hub.url)) == pushed[1][1]
    with pytest.raises(HubUnavailable):
        fetch_bundle(pushed[0][0].catalogue_value, cache_dir=cache, endpoint=hub.url)


def test_a_pinned_revision_already_unpacked_is_served_without_asking_the_hub(hub, bundle, tmp_path, caplog):
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    online = fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)
    hub.stop()
    asked = len(hub.requests)

    with caplog.at_level(logging.WARNING, logger="fashion_search.hub"):
        again = fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)

    assert again == online and served(again) == served(bundle)
    assert len(hub.requests) == asked and not caplog.records  # a commit cannot change: nothing to ask, nothing to say


def test_hub_gone_serves_the_cached_copy_of_main_and_says_so(hub, bundle, tmp_path, caplog):
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    spec = REPO
    cache = tmp_path / "cache"
    online = fetch_bundle(spec, cache_dir=cache, endpoint=hub.url)
    hub.stop()

    with caplog.at_level(logging.WARNING, logger="fashion_search.hub"):
        offline = fetch_bundle(spec, cache_dir=cache, endpoint=hub.url)

    assert offline == online and served(offline) == served(bundle)
    ours = [record for record in caplog.records if record.name == "fashion_search.hub"]
    warnings = [record.getMessage() for record in ours if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "Cannot reach the Hub" in warnings[0] and "cached copy" in warnings[0]
    assert REPO in warnings[0] and result.commit_sha in warnings[0]


def test_hub_answering_server_errors_counts_as_unreachable(hub, bundle, tmp_path, caplog):
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    online = fetch_bundle(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url)
    hub.outage = 503

    with caplog.at_level(logging.WARNING, logger="fashion_search.hub"):
        assert fetch_bundle(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url) == online
    assert "HfHubHTTPError" in caplog.text and result.commit_sha in caplog.text
    with pytest.raises(HubUnavailable, match=rf"{REPO}@main"):
        fetch_bundle(REPO, cache_dir=tmp_path / "empty", endpoint=hub.url)


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "main"])
def test_hub_gone_and_nothing_cached_names_repo_and_revision(hub, bundle, tmp_path, pinned):
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    hub.stop()
    spec = result.catalogue_value if pinned else REPO
    revision = result.commit_sha if pinned else "main"

    with pytest.raises(HubUnavailable) as caught:
        fetch_bundle(spec, cache_dir=tmp_path / "empty", endpoint=hub.url)

    message = str(caught.value)
    assert f"{REPO}@{revision}" in message
    assert "Cannot reach the Hub" in message and "start once with the Hub reachable" in message


def lose_the_downloaded_shard(cache: Path) -> None:
    """Delete the piece's images huggingface_hub downloaded into `cache`/hub (the file behind the snapshot's link)."""
    (shard,) = (cache / "hub").glob("datasets--*/snapshots/*/pieces/*/images.tar")
    shard.resolve().unlink()


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "main"])
def test_hub_gone_and_an_incomplete_cached_copy_is_not_served(hub, bundle, tmp_path, pinned):
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    spec = result.catalogue_value if pinned else REPO
    fetch_bundle(spec, cache_dir=tmp_path / "cache", endpoint=hub.url)
    lose_the_downloaded_shard(tmp_path / "cache")
    hub.stop()

    with pytest.raises(HubUnavailable, match=rf"{REPO}@{result.commit_sha if pinned else 'main'}"):
        fetch_bundle(spec, cache_dir=tmp_path / "cache", endpoint=hub.url)


def tampered(hub, result, path: str, content: bytes | None) -> str:
    """A commit on top of the pushed one, `path` replaced by `content` (None: deleted); its FASHION_CATALOG value."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    operation = CommitOperationDelete(path) if content is None else CommitOperationAdd(path, content)
    commit = HfApi(endpoint=hub.url).create_commit(REPO, [operation], repo_type="dataset", commit_message="tamper")
    return f"{REPO}@{commit.oid}"


def shard_of(hub, result) -> tuple[str, bytes]:
    """The path and bytes of the pushed catalogue's one piece's images (a WebDataset shard)."""
    files = hub.files(REPO, result.commit_sha)
    (path,) = [name for name in files if name.endswith("/images.tar")]
    return path, files[path]


def rebuilt_shard(original: bytes, *extra: tarfile.TarInfo | tuple[str, bytes], keep=lambda member: True) -> bytes:
    """The shard's members that `keep` accepts, then `extra` ones (test_shards.add_members)."""
    from test_shards import add_members

    buffer = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(original)) as source, tarfile.open(fileobj=buffer, mode="w") as out:
        for member in source:
            if keep(member):
                out.addfile(member, source.extractfile(member))
        add_members(out, *extra)
    return buffer.getvalue()


def sparse_bomb(original: bytes) -> bytes:
    """The shard with 1164.jpg replaced by a GNU sparse member of 512 stored bytes declaring 3 GB."""
    body = rebuilt_shard(original, keep=lambda member: not member.name.startswith("1164."))
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.getmembers()
        end = tar.offset  # where the end-of-archive blocks start
    return body[:end] + sparse_gnu("1164.jpg", b"x" * 512, 3 << 30) + bytes(1024)


TAMPERINGS = {
    "sparse member of 3 GB": (lambda shard: sparse_bomb(shard), "is a sparse file"),
    "symlink": (lambda shard: rebuilt_shard(shard, link("x.jpg", "/etc/passwd", tarfile.SYMTYPE)), "is a link"),
    "device": (lambda shard: rebuilt_shard(shard, device("x.jpg")), "is a device or special file"),
    "name outside the manifest": (lambda shard: rebuilt_shard(shard, ("../../evil.jpg", b"x")), "not an image of"),
    "duplicate": (
        lambda shard: rebuilt_shard(shard, ("1163.jpg", image_bytes(1))),
        "images/1163.jpg comes twice",
    ),
    "missing image": (
        lambda shard: rebuilt_shard(shard, keep=lambda member: not member.name.startswith("1164.")),
        "lack 1 images of the manifest, e.g. images/1164.jpg",
    ),
    "damaged image": (
        lambda shard: shard.replace(image_bytes(2), image_bytes(2)[:-1] + b"?"),
        "does not match the manifest's sha256 for images/1164.jpg",
    ),
    "truncated": (lambda shard: shard[:1500], "truncated|not a readable tar"),
    "not a tar": (lambda shard: b"<html>Service Unavailable</html>", "is not a readable tar"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_revision_is_refused_at_start_with_a_message_and_nothing_large_is_written(
    hub, bundle, tmp_path, tampering
):
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    path, shard = shard_of(hub, result)
    change, message = TAMPERINGS[tampering]
    spec = tampered(hub, result, path, change(shard))

    with pytest.raises(BundleError, match=message):
        fetch_bundle(spec, cache_dir=tmp_path / "cache", endpoint=hub.url)

    size, _ = disk_use(tmp_path)
    assert size < 10 << 20  # the 3 GB of the sparse member were never written
    assert not list((tmp_path / "cache" / "bundles").glob("*/*"))  # no revision folder, not even a partial one
    assert not list((tmp_path / "cache" / "hub").glob("*/snapshots/*"))  # the refused download is forgotten


def test_a_shard_list_naming_files_outside_shards_is_refused(hub, bundle, tmp_path):
    push_shards_layout(bundle, REPO, hub.url)  # a revision pushed before the pieces
    index = {"format_version": 1, "shards": [{"path": "manifest.json", "count": 3}]}
    spec = tampered(hub, None, "shards.json", json.dumps(index).encode())

    with pytest.raises(BundleError, match="names files outside shards/"):
        fetch_bundle(spec, cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert not list((tmp_path / "cache" / "bundles").glob("*/*"))


def test_a_revision_preloaded_into_huggingface_hubs_cache_starts_without_any_request(hub, bundle, tmp_path, caplog):
    """What a Space's `preload_from_hub` entry leaves: the files in huggingface_hub's cache, nothing else."""
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    repo, files, commit = result.preload_entry.split(" ")
    assert repo == f"datasets/{REPO}" and commit == result.commit_sha
    snapshot_download(
        REPO,
        repo_type="dataset",
        revision=commit,
        allow_patterns=files.split(","),
        cache_dir=tmp_path / "hf-cache",
        endpoint=hub.url,
    )
    asked = len(hub.requests)  # the Hub stays up: a start that asks it gets an answer, and is counted

    with caplog.at_level(logging.WARNING, logger="fashion_search.hub"):
        folder = fetch_bundle(
            result.catalogue_value, cache_dir=tmp_path / "app", hub_cache=tmp_path / "hf-cache", endpoint=hub.url
        )

    assert hub.requests[asked:] == [] and not caplog.records
    assert served(folder) == served(bundle)


def test_hub_back_again_completes_a_damaged_copy(hub, bundle, tmp_path):
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)
    lose_the_downloaded_shard(tmp_path / "cache")
    hub.stop()
    hub.start()  # same port, same repos

    folder = fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert served(folder) == served(bundle)


def test_unknown_repo_or_revision_is_not_found_rather_than_unavailable(hub, bundle, tmp_path):
    push_bundle(bundle, REPO, endpoint=hub.url)
    with pytest.raises(CatalogueNotFound, match=r"fashion-team/nope@main"):
        fetch_bundle("fashion-team/nope", cache_dir=tmp_path / "c", endpoint=hub.url)
    missing = "0" * 40
    with pytest.raises(CatalogueNotFound, match=rf"{REPO}@{missing}"):
        fetch_bundle(f"{REPO}@{missing}", cache_dir=tmp_path / "c", endpoint=hub.url)


@pytest.mark.slow
def test_hf_endpoint_in_the_environment_is_what_a_fresh_process_uses(hub, bundle, tmp_path):
    """How the app is pointed at the stand-in: HF_ENDPOINT must be set before huggingface_hub is imported."""
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home")}
    code = "import sys; from fashion_search.hub import fetch_bundle; print(fetch_bundle(sys.argv[1]))"

    done = subprocess.run(
        [sys.executable, "-c", code, result.catalogue_value],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )

    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.parent.parent == tmp_path / "home" / "fashion-search" / "bundles"  # default cache: $HF_HOME
    assert served(folder) == served(bundle)
    assert ("GET", f"/api/datasets/{REPO}/revision/{result.commit_sha}") in hub.requests


def test_a_fetched_bundle_loads_like_a_local_one(hub, tmp_path):
    names = ["a.jpg", "b/c.jpg"]
    root = make_bundle(tmp_path / "real", {name: image_bytes(len(name)) for name in names})
    result = push_bundle(root, REPO, endpoint=hub.url)

    loaded, images = load_catalogue(
        fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)
    )

    assert loaded.filenames == names
    np.testing.assert_array_equal(loaded.embeddings, np.load(root / "embeddings.npy"))
    assert images.read(1) == (root / "images" / "b/c.jpg").read_bytes()


# ---------------------------------------------------------------- precompute.py --push-to-hub


def run_precompute(hub, tmp_path, *args):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "home")}
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, str(root / "precompute.py"), *map(str, args)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_precompute_builds_pushes_and_prints_the_value_to_set(hub, tmp_path, catalogue, weights_file):
    out = tmp_path / "bundle"
    first = run_precompute(
        hub, tmp_path, catalogue / "images", "--out", out, "--weights", weights_file, "--quiet", "--push-to-hub", REPO
    )
    assert first.returncode == 0, first.stderr
    sha = hub.head(REPO)
    assert f"Pushed {REPO} at {sha}" in first.stdout
    assert f"FASHION_CATALOG={REPO}@{sha}" in first.stdout
    fetched = fetch_bundle(f"{REPO}@{sha}", cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert served(fetched) == served(out)

    commits = hub.commit_count(REPO)
    again = run_precompute(hub, tmp_path, "--out", out, "--push-to-hub", REPO)  # push only, no rebuild
    assert again.returncode == 0, again.stderr
    assert f"Unchanged, no new commit: {REPO} at {sha}" in again.stdout
    assert hub.commit_count(REPO) == commits


@pytest.mark.slow
def test_precompute_refuses_to_push_a_broken_bundle(hub, tmp_path):
    broken = make_bundle(tmp_path / "broken", {"a.jpg": image_bytes(1)})
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["model"]  # a manifest the app would refuse
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = run_precompute(hub, tmp_path, "--out", tmp_path / "broken", "--push-to-hub", REPO)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "manifest.json has no valid 'model'" in result.stderr
    assert ("dataset", REPO) not in hub.repos  # nothing was published


# ---------------------------------------------------------------- serving a fetched revision's pictures


@pytest.fixture
def fetched(hub, bundle, tmp_path):
    """(the local bundle, its Hub revision fetched and loaded: bundle, images); a name that URLs must quote too."""
    make_bundle(bundle, {"1163.jpg": image_bytes(1), "a b%#?.jpg": image_bytes(2), "shoes/9.png": image_bytes(3)})
    result = push_bundle(bundle, REPO, endpoint=hub.url)
    return bundle, load_catalogue(fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url))


def picture_of(images):
    """What Recommender.picture answers for a revision served alone: its pictures by revision and name."""
    rows = {name: row for row, name in enumerate(images.filenames)}

    def picture(revision: str, name: str):
        if revision != images.revision or name not in rows:
            return None
        return images.read(rows[name]), media_type(name)

    return picture


def test_the_file_route_serves_each_catalogue_picture_byte_for_byte_and_nothing_else(fetched):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    local, (bundle, images) = fetched
    client = TestClient(Starlette(routes=image_route.routes(picture_of(images))))

    for row, name in enumerate(bundle.filenames):
        url = "http://testserver" + images.route_path(row)
        # as a browser asks for a gallery's URL, and as gradio_client does (through Gradio's file route)
        for path in (images.route_path(row), "/gradio_api/file=" + quote(url, safe="/")):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.content == (local / "images" / name).read_bytes(), path
            assert answer.headers["x-content-type-options"] == "nosniff"
    assert client.get(images.route_path(2)).headers["content-type"] == "image/png"  # shoes/9.png
    revision = images.revision
    refused = [
        f"/gradio_api/catalogue-images/{revision}/0/{bundle.filenames[1]}",  # a row number before the name
        f"/gradio_api/catalogue-images/{revision}/x.jpg",  # no such product
        f"/gradio_api/catalogue-images/{revision}/images/{bundle.filenames[0]}",
        f"/gradio_api/catalogue-images/{'0' * 40}/{bundle.filenames[0]}",  # a revision not served
        f"/gradio_api/catalogue-images/{revision}/../../manifest.json",
        f"/gradio_api/catalogue-images/{revision}/%2e%2e/image-shards.json",
        "/gradio_api/catalogue-images/manifest.json",
        f"/gradio_api/file=/gradio_api/catalogue-images/{revision}/{bundle.filenames[0]}",  # not a URL
        f"/gradio_api/file=file%3A//x/gradio_api/catalogue-images/{revision}/{bundle.filenames[0]}",
    ]
    for path in refused:
        assert client.get(path).status_code == 404, path


def test_pictures_from_shards_go_to_the_gallery_as_urls_and_to_the_photo_as_a_file_of_their_bytes(fetched, tmp_path):
    local, (bundle, images) = fetched
    assert images.static_paths == [] and images.file(0) is None

    items = webapp.gallery_items([Match(1, 2, bundle.filenames[2], 0.1, Path("unused"), {})], images, "http://x:1")
    assert items[0][0] == f"http://x:1/gradio_api/catalogue-images/{images.revision}/shoes/9.png"

    photo = image_route.photo_file(images, 2, tmp_path / "gradio")
    assert Path(photo).read_bytes() == (local / "images" / "shoes/9.png").read_bytes()
    assert Path(photo).name == "9.png" and Path(photo).is_relative_to(tmp_path / "gradio")
    assert images.name_of_file(photo) == "shoes/9.png" and images.name_of_file(local / "images/1163.jpg") is None
    assert images.route_path(1) == f"/gradio_api/catalogue-images/{images.revision}/a%20b%25%23%3F.jpg"
    assert image_route.photo_file(images, 2, tmp_path / "gradio") == photo  # the same file, not a second one


def test_a_bundle_folder_keeps_its_files_as_before(bundle):
    loaded, images = load_catalogue(bundle)
    assert images.static_paths == [bundle / "images"] and not images.served_by_route
    assert images.file(1) == bundle / "images" / loaded.filenames[1]
    assert image_route.photo_file(images, 1, "/nowhere") == str(bundle / "images" / loaded.filenames[1])
    assert images.name_of_file(bundle / "images" / "shoes" / "9.png") == "shoes/9.png"
    match = Match(1, 0, loaded.filenames[0], 0.1, loaded.image_path(0), {})
    assert webapp.gallery_items([match], images, "http://x:1")[0][0] == str(bundle / "images" / loaded.filenames[0])


@pytest.mark.slow
def test_the_app_refuses_a_tampered_revision_with_a_message_and_no_traceback(hub, bundle, tmp_path):
    from app_runner import ROOT, app_env

    result = push_bundle(bundle, REPO, endpoint=hub.url)
    path, shard = shard_of(hub, result)
    spec = tampered(hub, result, path, sparse_bomb(shard))
    env = app_env(tmp_path, FASHION_CATALOG=spec, FASHION_WEIGHTS="random", HF_ENDPOINT=hub.url)

    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr and last.startswith("error: ")
    assert "member '1164.jpg' is a sparse file (declaring 3,221,225,472 bytes), not a plain file" in last
    assert disk_use(tmp_path)[0] < 10 << 20


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_in_a_browser_the_pictures_of_a_hub_revision_come_from_its_shards_byte_for_byte(hub, tmp_path):
    """The page of an app serving a Hub revision: each gallery picture is the catalogue's file to the byte, and a click
    on a result makes its picture the query, named, as with a bundle folder."""
    from app_runner import AppProcess, app_env, build_random_weights_bundle, free_port
    from playwright.sync_api import expect, sync_playwright
    from test_browser import ALL_IMAGES_LOADED, CHROMIUM_ARGS, TIMEOUT_MS, upload_and_submit

    local = build_random_weights_bundle(tmp_path / "made")
    result = push_bundle(local, REPO, endpoint=hub.url)
    port = free_port()
    env = app_env(tmp_path, FASHION_CATALOG=result.catalogue_value, FASHION_WEIGHTS="random", HF_ENDPOINT=hub.url)
    env["GRADIO_SERVER_PORT"] = str(port)
    bytes_of = """async images => Promise.all(images.map(async img =>
        [img.src, Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer()))]))"""

    with AppProcess([], env, tmp_path / "app.log") as app, sync_playwright() as playwright:
        url = app.wait_ready(port)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        upload_and_submit(page, local / "images" / load_catalogue(local)[0].filenames[2])
        page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
        pictures = page.eval_on_selector_all("#products img", bytes_of)
        page.locator("#products img").nth(1).click()
        label = page.locator("#query > label[data-testid='block-label']")
        expect(label).to_contain_text("More like this: ")
        photo = page.eval_on_selector("#query img", "img => img.complete && img.naturalWidth > 0")
        browser.close()

    prefix = f"{url}gradio_api/catalogue-images/{result.commit_sha}/"
    assert len(pictures) == 5 and all(src.startswith(prefix) for src, _ in pictures)
    for src, data in pictures:
        name = unquote(src[len(prefix) :])
        assert bytes(data) == (local / "images" / name).read_bytes(), src
    assert photo
