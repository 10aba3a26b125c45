"""The approximate index at 100k rows: recall and exact distances against the exact search, filters, the files it
travels in, and every way those files can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from big_catalogue import describe_neighbourhoods, grown_vectors, structured_base
from sklearn.neighbors import NearestNeighbors

from fashion_search import approximate
from fashion_search.approximate import ApproximateIndex, IndexFileError
from fashion_search.bundle import INDEX_FILES, BundleFormatError, BundleHashMismatch, load_bundle, write_bundle
from fashion_search.index import NeighbourIndex
from fashion_search.search import open_index

pytestmark = pytest.mark.slow  # trains an index over 100k rows

ROWS = 100_000
QUERIES = 60


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    """(catalogue rows grown from a structured base, held-out queries: base-like vectors no row was grown from)."""
    base = structured_base(2_000 + QUERIES, seed=1)
    return grown_vectors(base[:-QUERIES], ROWS, seed=2), base[-QUERIES:]


@pytest.fixture(scope="module")
def index(vectors) -> ApproximateIndex:
    embeddings, _ = vectors
    return ApproximateIndex(embeddings, approximate.train(embeddings))


def recall(found: list, expected: list, k: int) -> float:
    return float(np.mean([len({n.row for n in a[:k]} & {n.row for n in b[:k]}) / k for a, b in zip(found, expected)]))


def test_the_vectors_have_neighbourhoods(vectors):
    embeddings, queries = vectors
    exact = NeighbourIndex(embeddings).search(queries, 20)
    gaps = describe_neighbourhoods(embeddings, queries, np.array([[n.row for n in row] for row in exact]))
    assert gaps["20th"] < 0.8 * gaps["random row"], gaps  # else recall would measure noise


@pytest.mark.parametrize("share", [None, 0.4, 0.05, 0.002])
def test_recall_against_the_exact_search_filtered_or_not(vectors, index, share):
    embeddings, queries = vectors
    rows = None if share is None else np.flatnonzero(np.random.default_rng(3).random(ROWS) < share)
    exact = NeighbourIndex(embeddings).search(queries, 20, rows)
    found = index.search(queries, 20, rows)
    assert recall(found, exact, 5) >= 0.99 and recall(found, exact, 20) >= 0.98
    if rows is not None:  # an exact filter: nothing else comes back, and as many as are eligible
        assert {n.row for result in found for n in result} <= set(rows.tolist())
        assert all(len(result) == min(20, len(rows)) for result in found)


def test_distances_are_the_reference_calls(vectors, index):
    """For every row returned, the distance the reference design's scikit-learn call gives that row."""
    embeddings, queries = vectors
    found = index.search(queries[:10], 20)
    for query, result in zip(queries[:10], found):
        rows = np.array([n.row for n in result])
        reference = NearestNeighbors(algorithm="brute", metric="euclidean").fit(embeddings)
        distances, neighbours = reference.kneighbors(query[None], 20)
        by_row = dict(zip(neighbours[0].tolist(), distances[0].tolist()))
        exact = np.linalg.norm(embeddings[rows].astype(np.float64) - query.astype(np.float64), axis=1)
        np.testing.assert_allclose([n.distance for n in result], exact, atol=1e-6)
        assert [n.distance for n in result] == sorted(n.distance for n in result)
        for n in result:
            if n.row in by_row:
                assert n.distance == pytest.approx(by_row[n.row], abs=1e-6)


def test_search_interface_is_the_exact_index(vectors, index):
    embeddings, queries = vectors
    assert len(index) == ROWS
    assert index.search(queries[:2], 5, np.array([], dtype=np.int64)) == [[], []]
    few = np.array([5, 77, 90_001])
    got = index.search(queries[0], 10, few)[0]
    assert [n.row for n in got] == [n.row for n in NeighbourIndex(embeddings).search(queries[0], 10, few)[0]]
    assert [n.rank for n in got] == [1, 2, 3]
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(queries[0], 0)


def small_bundle(root: Path, n: int = 3_000, index: bool = True) -> tuple[Path, np.ndarray]:
    embeddings = grown_vectors(structured_base(300, seed=4), n, seed=5)
    (root / "images").mkdir(parents=True)
    names = [f"{i}.jpg" for i in range(n)]
    for name in names:
        (root / "images" / name).write_bytes(b"x")
    files = approximate.write(root, approximate.train(embeddings)) if index else ()
    model = {"architecture": "stub", "weights": "random:0"}
    write_bundle(root, embeddings=embeddings, filenames=names, model=model, preprocessing="p", index_files=files)
    return root, embeddings


def test_a_bundle_carries_the_index_in_its_manifest(tmp_path):
    root, embeddings = small_bundle(tmp_path / "b")
    bundle = load_bundle(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(INDEX_FILES) <= set(manifest["files"]) and bundle.has_index
    assert isinstance(open_index(bundle), ApproximateIndex)
    assert isinstance(open_index(bundle, "exact"), NeighbourIndex)  # the switch: FASHION_SEARCH=exact
    for name in INDEX_FILES[1:]:  # plain arrays, loadable without pickle
        assert np.load(root / name, allow_pickle=False).dtype != object
    # Written again without an index, the files go with it.
    write_bundle(
        root, embeddings=embeddings, filenames=bundle.filenames, model=bundle.manifest["model"], preprocessing="p"
    )
    assert not load_bundle(root).has_index and not any((root / name).exists() for name in INDEX_FILES)


def test_a_damaged_index_file_is_refused_by_its_hash(tmp_path):
    root, _ = small_bundle(tmp_path / "b")
    codes = root / "ivf_codes.npy"
    data = bytearray(codes.read_bytes())
    data[-5] ^= 0xFF
    codes.write_bytes(bytes(data))
    with pytest.raises(BundleHashMismatch, match=r"ivf_codes\.npy does not match the manifest"):
        load_bundle(root)


def rewrite_manifest_hash(root: Path, name: str) -> None:
    """Tamper as someone who also rewrites the manifest would: the hash check passes, the content is wrong."""
    from fashion_search.files import sha256_file

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(root / name)
    (root / "manifest.json").write_text(json.dumps(manifest))


def resave(name: str, change, **options):
    """A tampering: `name`'s array replaced by `change(array)`."""
    return lambda root: np.save(root / name, change(np.load(root / name)), **options)


def move_rows(root: Path) -> None:
    """Every row of a list moved to the next list, the codes kept in list order: consistent, but wrong."""
    lists, codes = np.load(root / "ivf_lists.npy"), np.load(root / "ivf_codes.npy")
    by_row = np.empty_like(codes)
    by_row[np.argsort(lists, kind="stable")] = codes
    moved = ((lists + 1) % (lists.max() + 1)).astype(np.int32)
    np.save(root / "ivf_lists.npy", moved)
    np.save(root / "ivf_codes.npy", by_row[np.argsort(moved, kind="stable")])
    rewrite_manifest_hash(root, "ivf_codes.npy")


TAMPERINGS = {
    "codes reversed": (
        "ivf_codes.npy",
        resave("ivf_codes.npy", lambda a: a[::-1].copy()),
        "ivf_codes.npy does not match the catalogue's embeddings",
    ),
    "rows moved to other lists": (
        "ivf_lists.npy",
        move_rows,
        "ivf_lists.npy puts rows in lists whose centroid is far from them",
    ),
    "lists out of range": (
        "ivf_lists.npy",
        resave("ivf_lists.npy", lambda a: a + 10_000),
        "ivf_lists.npy names lists outside 0",
    ),
    "another dtype": (
        "ivf_lists.npy",
        resave("ivf_lists.npy", lambda a: a.astype(np.int64)),
        r"ivf_lists.npy holds int64 \(3000,\), expected int32 \(3000,\)",
    ),
    "a row short": (
        "ivf_codes.npy",
        resave("ivf_codes.npy", lambda a: a[:-1]),
        r"ivf_codes.npy holds float32 \(2999, ",
    ),
    "non-finite": (
        "ivf_centroids.npy",
        resave("ivf_centroids.npy", lambda a: np.full_like(a, np.nan)),
        "ivf_centroids.npy has non-finite values",
    ),
    "a pickle": (
        "ivf_mean.npy",
        lambda r: np.save(r / "ivf_mean.npy", np.array([{}]), allow_pickle=True),
        "ivf_mean.npy could not be read as a plain .npy array",
    ),
    "another kind": (
        "ivf.json",
        lambda r: (r / "ivf.json").write_text('{"kind": "faiss"}'),
        "ivf.json is not an index of kind 'ivf-pca-1'",
    ),
    "not JSON": ("ivf.json", lambda r: (r / "ivf.json").write_text("[1"), "ivf.json could not be read as JSON"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_tampered_index_is_refused_with_the_fix(tmp_path, tampering):
    name, tamper, message = TAMPERINGS[tampering]
    root, _ = small_bundle(tmp_path / "b")
    tamper(root)
    rewrite_manifest_hash(root, name)
    bundle = load_bundle(root)
    with pytest.raises(IndexFileError, match=message) as caught:
        open_index(bundle)
    assert "--index approximate" in str(caught.value) and "--search exact" in str(caught.value)
    assert isinstance(open_index(bundle, "exact"), NeighbourIndex)  # the exact search still serves it


def test_an_index_of_other_embeddings_is_refused(tmp_path):
    root, embeddings = small_bundle(tmp_path / "a")
    other = grown_vectors(structured_base(300, seed=9), len(embeddings), seed=10)
    approximate.write(root, approximate.train(other))
    for name in INDEX_FILES:
        rewrite_manifest_hash(root, name)
    with pytest.raises(IndexFileError, match="does not match the catalogue's embeddings"):
        open_index(load_bundle(root))


def test_a_manifest_with_part_of_an_index_is_refused(tmp_path):
    root, _ = small_bundle(tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["files"]["ivf_codes.npy"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match=r"only part of the approximate index \(not \['ivf_codes.npy'\]\)"):
        load_bundle(root)


def test_update_keeps_the_lists_and_places_new_rows_without_training(vectors, index):
    embeddings, queries = vectors
    old = index.data
    kept = np.arange(0, ROWS, 2)  # every other row stays (in a new order), 10k new rows arrive
    new_rows = grown_vectors(structured_base(500, seed=7), 10_000, seed=8)
    changed = np.concatenate([embeddings[kept[::-1]], new_rows])
    old_rows = np.concatenate([kept[::-1], np.full(len(new_rows), -1)])
    data = approximate.update(old, changed, old_rows)
    assert data.components is old.components  # not trained again: the old lists stay, new products get lists too
    np.testing.assert_array_equal(data.centroids[: len(old.centroids)], old.centroids)
    assert len(old.centroids) < len(data.centroids) <= len(old.centroids) + 10_000 / (ROWS / len(old.centroids))
    np.testing.assert_array_equal(data.lists[: len(kept)], old.lists[kept[::-1]])
    assert data.info["added_since_training"] == 10_000 and not data.retraining_due
    updated = ApproximateIndex(changed, data)
    updated.check_agreement(Path("."))
    exact = NeighbourIndex(changed).search(queries, 20)
    found = updated.search(queries, 20)
    assert recall(found, exact, 5) >= 0.99 and recall(found, exact, 20) >= 0.98
    more = np.concatenate([np.arange(len(changed)), np.full(45_000, -1)])
    grown = approximate.update(data, np.concatenate([changed, embeddings[:45_000]]), more)
    assert grown.retraining_due  # 55k added to 100k trained on


def test_the_hub_carries_the_index_like_the_other_data_files(tmp_path, monkeypatch):
    from hub_standin import HubStandIn

    from fashion_search.hub import fetch_bundle, push_bundle
    from fashion_search.images import load_catalogue

    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    root, embeddings = small_bundle(tmp_path / "b", n=1_500)
    with HubStandIn(tmp_path / "store", token="hf_standin_token") as hub:
        pushed = push_bundle(root, "shop/catalogue", endpoint=hub.url)
        fetched, _ = load_catalogue(fetch_bundle(pushed.catalogue_value, cache_dir=tmp_path / "c1", endpoint=hub.url))
        assert fetched.has_index
        for name in INDEX_FILES:
            assert (fetched.root / name).read_bytes() == (root / name).read_bytes()
        queries = embeddings[:5] + 0.01
        local = open_index(load_bundle(root)).search(queries, 5)
        assert isinstance(open_index(fetched), ApproximateIndex) and open_index(fetched).search(queries, 5) == local
        # Pushed again without its index: the index's files leave the repo, and the fetched revision has none.
        bundle = load_bundle(root)
        write_bundle(
            root, embeddings=embeddings, filenames=bundle.filenames, model=bundle.manifest["model"], preprocessing="p"
        )
        again = push_bundle(root, "shop/catalogue", endpoint=hub.url)
        plain, _ = load_catalogue(fetch_bundle(again.catalogue_value, cache_dir=tmp_path / "c2", endpoint=hub.url))
        assert not plain.has_index and not any((plain.root / name).exists() for name in INDEX_FILES)
