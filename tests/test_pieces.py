"""A catalogue on the Hub as pieces (fashion_search.pieces): pushed and fetched against the loopback Hub stand-in, a
change sends and downloads in proportion to its size, sold-out products never come back, compaction keeps the files
bounded without deleting one the revision before still names, and revisions of the earlier layouts still load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hub_standin import HubStandIn
from legacy_layout import push_shards_layout

from fashion_search import approximate, pieces
from fashion_search.bundle import IMAGES, BundleError, load_bundle, write_bundle
from fashion_search.hub import fetch_bundle, fetch_commit, push_bundle
from fashion_search.images import load_catalogue
from fashion_search.vectors import list_vector_files

REPO = "shop/catalogue"


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of at most 64 rows (small: under 16 live rows; at most 3 small), so a few hundred products make many."""
    monkeypatch.setattr(pieces, "PIECE_ROWS", 64)
    monkeypatch.setattr(pieces, "SMALL_ROWS", 16)
    monkeypatch.setattr(pieces, "SMALL_PIECES", 3)


def shop(root: Path, names) -> Path:
    """A bundle of these products: each one's picture, vector (8-d) and metadata depend on its name alone, as a
    rebuild by precompute.py keeps those of unchanged products."""
    names = sorted(names)
    (root / IMAGES).mkdir(parents=True, exist_ok=True)
    for old in (root / IMAGES).iterdir():
        if old.name not in names:
            old.unlink()
    for name in names:
        if not (root / IMAGES / name).exists():
            (root / IMAGES / name).write_bytes(picture(name))
    vectors = np.stack([np.random.default_rng(seed(name)).standard_normal(8) for name in names]).astype(np.float32)
    write_bundle(
        root,
        embeddings=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        filenames=names,
        model={"name": "test", "weights": "random:0"},
        preprocessing="test",
        metadata=[{"id": Path(name).stem, "baseColour": ["Red", "Blue"][seed(name) % 2]} for name in names],
    )
    return root


def numbered(count: int) -> list[str]:
    return [f"{i}.jpg" for i in range(count)]


def seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def picture(name: str, size: int = 600) -> bytes:
    return np.random.default_rng(seed(name)).integers(0, 256, size, dtype=np.uint8).tobytes()


def served(root: Path) -> dict[str, tuple[bytes, bytes, dict]]:
    """What a catalogue folder serves, by file name: the picture's bytes, the vector's, the metadata."""
    bundle, images = load_catalogue(root)
    metadata = bundle.metadata or [{}] * len(bundle.filenames)
    return {
        name: (images.read(row), bundle.embeddings[row].tobytes(), metadata[row])
        for row, name in enumerate(bundle.filenames)
    }


def revision_bytes(hub: HubStandIn, sha: str) -> int:
    head = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=sha), "test")
    sizes = hub.file_sizes(REPO, revision=sha)
    return sum(sizes[path] for path in [pieces.HEAD, *head.files()])


def sent(hub: HubStandIn, since: int) -> int:
    return sum(size for _, size in hub.uploads[since:])


def downloaded(hub: HubStandIn, since: int) -> int:
    return sum(size for _, size in hub.downloads[since:])


def test_a_catalogue_goes_to_the_hub_as_pieces_and_comes_back_as_it_was(hub, tmp_path, small_pieces):
    local = shop(tmp_path / "bundle", numbered(300))
    result = push_bundle(local, REPO, endpoint=hub.url)
    files = hub.files(REPO, revision=result.commit_sha)
    head = pieces.parse_head(files[pieces.HEAD], "test")
    assert head.count == 300 and len(head.pieces) == 5  # 300 products in pieces of at most 64
    assert set(files) == {pieces.HEAD, "README.md", ".gitattributes", *head.files()}
    assert served(fetch_bundle(result.catalogue_value, cache_dir=tmp_path / "cache", endpoint=hub.url)) == served(local)


def test_a_one_percent_change_sends_and_downloads_about_one_percent(hub, tmp_path, small_pieces):
    rng = np.random.default_rng(0)
    names = numbered(2000)
    local = shop(tmp_path / "bundle", names)
    first = push_bundle(local, REPO, endpoint=hub.url)
    cache = tmp_path / "cache"
    before = fetch_commit(REPO, first.commit_sha, cache_dir=cache, endpoint=hub.url)
    sold_out = set(rng.choice(names, 10, replace=False))  # at random places: most pieces lose one
    changed = [name for name in names if name not in sold_out] + [f"new-{i}.jpg" for i in range(10)]
    shop(local, changed)
    uploads, commits = len(hub.uploads), hub.commit_count(REPO)
    second = push_bundle(local, REPO, endpoint=hub.url)
    pushed = sent(hub, uploads)
    assert hub.commit_count(REPO) == commits + 1  # the new piece with the head: the branch moves once
    downloads = len(hub.downloads)
    folder = fetch_commit(REPO, second.commit_sha, cache_dir=cache, endpoint=hub.url)
    fetched = downloaded(hub, downloads)

    size = revision_bytes(hub, second.commit_sha)
    assert 0 < pushed <= 0.03 * size, (pushed, size)
    assert 0 < fetched <= 0.03 * size, (fetched, size)
    after = served(folder)
    assert set(after) == set(changed) and not sold_out & set(after)
    assert after == served(local)
    # No copy of the vectors: each revision reads its pieces' files where the download left them, so the two share
    # the unchanged pieces' files (one file, one set of pages).
    files = [vector_files(hub, before, first.commit_sha), vector_files(hub, folder, second.commit_sha)]
    kept = files[0].keys() & files[1].keys()
    assert len(kept) >= len(files[1]) - 2 and all(files[0][piece] == files[1][piece] for piece in kept)
    assert all(Path(path).parent.name == "blobs" for path in files[1].values())
    assert not (folder / "embeddings.npy").exists() and not (before / "embeddings.npy").exists()
    # Loaded side by side, as during a swap, the two revisions share the kept pieces' names and metadata: only the
    # new pieces' rows are read.
    old, new = load_catalogue(before)[0], load_catalogue(folder)[0]
    shared = {id(part) for part in old.pieces} & {id(part) for part in new.pieces}
    assert len(shared) == len(kept) and len(new.pieces) - len(kept) <= 2
    rows = {name: row for row, name in enumerate(old.filenames)}
    same = [new.metadata[row] is old.metadata[rows[name]] for row, name in enumerate(new.filenames) if name in rows]
    assert sum(same) >= 0.9 * len(new.filenames)


def vector_files(hub: HubStandIn, folder: Path, sha: str) -> dict[str, str]:
    """{piece id: the vectors file a fetched revision reads}."""
    head = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=sha), "test")
    return {piece.id: entry["path"] for piece, entry in zip(head.pieces, list_vector_files(folder), strict=True)}


def test_compaction_keeps_the_files_bounded_and_keeps_what_the_revision_before_names(hub, tmp_path, small_pieces):
    rng = np.random.default_rng(1)
    names = numbered(400)
    local = shop(tmp_path / "bundle", names)
    first = push_bundle(local, REPO, endpoint=hub.url).commit_sha
    before = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=first), "test")
    most_pieces = 0
    for day in range(40):  # 3 % sold out at random places and as many new products, each day
        sold_out = set(rng.choice(names, 12, replace=False))
        names = [name for name in names if name not in sold_out] + [f"day{day}-{i}.jpg" for i in range(12)]
        shop(local, names)
        sha = push_bundle(local, REPO, endpoint=hub.url).commit_sha
        files = set(hub.files(REPO, revision=sha))
        head = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=sha), "test")
        assert head.count == len(names)
        assert set(before.files()) <= files  # the revision before can still be read whole
        assert files - {pieces.HEAD, "README.md", ".gitattributes"} <= set(head.files()) | set(before.files())
        # every piece but the small ones holds at least 3/4 of PIECE_ROWS's lower bound, SMALL_ROWS, live
        assert len(head.pieces) <= len(names) / (0.75 * pieces.SMALL_ROWS) + pieces.SMALL_PIECES
        assert sum(piece.live_count < pieces.SMALL_ROWS for piece in head.pieces) <= pieces.SMALL_PIECES
        assert all(len(piece.removed) <= pieces.REWRITE_SHARE * piece.rows for piece in head.pieces)
        most_pieces = max(most_pieces, len(head.pieces))
        before = head
    assert most_pieces <= 400 / (0.75 * pieces.SMALL_ROWS) + pieces.SMALL_PIECES
    assert served(fetch_bundle(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url)) == served(local)


def test_a_revision_of_the_shards_layout_still_loads_and_the_next_push_converts_the_repo(hub, tmp_path, small_pieces):
    local = shop(tmp_path / "bundle", numbered(100))
    old = push_shards_layout(local, REPO, hub.url)
    old_files = set(hub.files(REPO, revision=old))
    assert "shards.json" in old_files and pieces.HEAD not in old_files
    assert served(fetch_bundle(f"{REPO}@{old}", cache_dir=tmp_path / "a", endpoint=hub.url)) == served(local)

    converted = push_bundle(local, REPO, endpoint=hub.url).commit_sha
    assert old_files <= set(hub.files(REPO, revision=converted))  # kept one more revision
    assert served(fetch_bundle(f"{REPO}@{converted}", cache_dir=tmp_path / "b", endpoint=hub.url)) == served(local)
    shop(local, numbered(101))
    later = set(hub.files(REPO, revision=push_bundle(local, REPO, endpoint=hub.url).commit_sha))
    assert not (old_files - {"README.md", ".gitattributes"}) & later
    again = fetch_bundle(f"{REPO}@{old}", cache_dir=tmp_path / "c", endpoint=hub.url)
    assert served(again) == served(shop(tmp_path / "first", numbered(100)))


def test_an_unchanged_catalogue_makes_no_commit(hub, tmp_path):
    local = shop(tmp_path / "bundle", numbered(20))
    first = push_bundle(local, REPO, endpoint=hub.url)
    again = push_bundle(local, REPO, endpoint=hub.url)
    assert (again.commit_sha, again.created_commit) == (first.commit_sha, False)


@pytest.mark.parametrize("what", ["vectors", "image", "head"])
def test_a_tampered_piece_is_refused_and_nothing_of_it_is_kept(hub, tmp_path, what):
    local = shop(tmp_path / "bundle", numbered(20))
    sha = push_bundle(local, REPO, endpoint=hub.url).commit_sha
    head = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=sha), "test")
    (piece,) = head.pieces
    if what == "vectors":
        path, content = piece.path(pieces.VECTORS), hub.read_file(REPO, piece.path(pieces.VECTORS))[:-4] + b"\0" * 4
    elif what == "image":
        tar = hub.read_file(REPO, piece.path(pieces.TAR))
        image = picture("3.jpg")
        path, content = piece.path(pieces.TAR), tar.replace(image, image[:-1] + bytes([image[-1] ^ 1]))
    else:
        value = json.loads(hub.read_file(REPO, pieces.HEAD))
        value["pieces"][0]["files"]["pieces/../manifest.json"] = "0" * 64
        path, content = pieces.HEAD, json.dumps(value).encode()
    from huggingface_hub import CommitOperationAdd, HfApi

    bad = HfApi(endpoint=hub.url).create_commit(
        REPO, [CommitOperationAdd(path, content)], repo_type="dataset", commit_message="tamper"
    )
    with pytest.raises(BundleError) as refused:
        fetch_bundle(f"{REPO}@{bad.oid}", cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert f"{REPO}@{bad.oid}" in str(refused.value)
    assert not list((tmp_path / "cache" / "bundles").glob("*/*"))  # no revision folder


def indexed_shop(root: Path, names, previous: Path | None = None, retrain: bool = False) -> Path:
    """shop(), with the approximate index: trained, or carried over from the bundle at `previous` as precompute.py
    does after a change (approximate.update: kept rows keep their list)."""
    shop(root, names)
    bundle = load_bundle(root)
    if previous is None or retrain:
        data = approximate.train(bundle.embeddings, lists=8, dims=4, seed=len(names) if retrain else 0)
    else:
        before = load_bundle(previous)
        rows = {name: row for row, name in enumerate(before.filenames)}
        old_rows = np.array([rows.get(name, -1) for name in bundle.filenames])
        data = approximate.update(approximate.load(before.root, before.embeddings).data, bundle.embeddings, old_rows)
    files = approximate.write(root, data)
    manifest = bundle.manifest
    metadata = bundle.metadata
    write_bundle(
        root,
        embeddings=np.array(bundle.embeddings),  # a copy: the file is being rewritten
        filenames=bundle.filenames,
        model=manifest["model"],
        preprocessing=manifest["preprocessing"],
        metadata=metadata,
        index_files=files,
    )
    return root


def index_by_name(root: Path) -> dict[str, tuple[int, bytes]]:
    """Each product's list and reduced vector in the catalogue's approximate index."""
    bundle, _ = load_catalogue(root)
    index = approximate.load(bundle.root, bundle.embeddings)
    held = index.codes.take(index.position)  # (each row's, in row order)
    return {name: (int(index.data.lists[row]), held[row].tobytes()) for row, name in enumerate(bundle.filenames)}


def test_the_approximate_index_travels_in_the_pieces_its_rows_again_only_when_trained_again(
    hub, tmp_path, small_pieces
):
    names = numbered(300)
    local = indexed_shop(tmp_path / "v1", names)
    push_bundle(local, REPO, endpoint=hub.url)
    fetched = fetch_bundle(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert index_by_name(fetched) == index_by_name(local)

    # A change with the index carried over: the kept pieces' index rows stay; the new piece brings its own.
    changed = [name for name in names if name not in {"7.jpg", "100.jpg"}] + ["new-1.jpg", "new-2.jpg"]
    local2 = indexed_shop(tmp_path / "v2", changed, previous=local)
    uploads = len(hub.uploads)
    sha = push_bundle(local2, REPO, endpoint=hub.url).commit_sha
    head = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=sha), "test")
    (new,) = [
        piece
        for piece in head.pieces
        if "new-1.jpg" in json.loads(hub.read_file(REPO, piece.path("rows.json")))["filenames"]
    ]
    index_paths = {path for path in head.index}
    sent_paths = {path for path, _ in hub.uploads[uploads:] if not path.startswith("lfs:")}
    lfs = {path[4:] for path, _ in hub.uploads[uploads:] if path.startswith("lfs:")}
    files = hub.files(REPO, revision=sha)
    sent = {path for path in head.files() if path in sent_paths or hashlib.sha256(files[path]).hexdigest() in lfs}
    assert sent - index_paths == set(new.files)  # of the pieces, only the new one's files (its index rows too)
    fetched2 = fetch_bundle(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert index_by_name(fetched2) == index_by_name(local2)

    # Trained again: every piece's index rows are sent anew, their images and vectors are not.
    local3 = indexed_shop(tmp_path / "v3", changed, retrain=True)
    uploads = len(hub.uploads)
    sha = push_bundle(local3, REPO, endpoint=hub.url).commit_sha
    head3 = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=sha), "test")
    assert [piece.id for piece in head3.pieces] == [piece.id for piece in head.pieces]
    files = hub.files(REPO, revision=sha)
    lfs = {path[4:] for path, _ in hub.uploads[uploads:] if path.startswith("lfs:")}
    resent = {path for path in head3.files() if hashlib.sha256(files[path]).hexdigest() in lfs}
    assert resent and all(path.rsplit("/", 1)[1].startswith(("lists-", "codes-", "ivf")) for path in resent)
    assert index_by_name(fetch_bundle(REPO, cache_dir=tmp_path / "cache", endpoint=hub.url)) == index_by_name(local3)


def test_a_piece_changed_under_an_unchanged_head_is_checked_again_though_checked_before(hub, tmp_path):
    """A piece checked for one revision is not read again for the next, unless its files are other bytes."""
    from huggingface_hub import CommitOperationAdd, HfApi

    local = shop(tmp_path / "bundle", numbered(20))
    sha = push_bundle(local, REPO, endpoint=hub.url).commit_sha
    cache = tmp_path / "cache"
    fetch_commit(REPO, sha, cache_dir=cache, endpoint=hub.url)  # the piece is checked, and remembered so
    (piece,) = pieces.parse_head(hub.read_file(REPO, pieces.HEAD, revision=sha), "test").pieces
    tar = hub.read_file(REPO, piece.path(pieces.TAR))
    image = picture("3.jpg")
    damaged = tar.replace(image, image[:-1] + bytes([image[-1] ^ 1]))  # the same size
    bad = HfApi(endpoint=hub.url).create_commit(
        REPO, [CommitOperationAdd(piece.path(pieces.TAR), damaged)], repo_type="dataset", commit_message="tamper"
    )
    with pytest.raises(BundleError, match="3.jpg"):
        fetch_commit(REPO, bad.oid, cache_dir=cache, endpoint=hub.url)
