"""Search: exact filters against a brute-force reference, top-k bounds, and the no-match message."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import embed_files

from fashion_search.bundle import Bundle, load_bundle
from fashion_search.imaging import PREPROCESSING_ID
from fashion_search.search import FILTER_COLUMNS, MAX_K, Match, NoMatch, Searcher, check_k


@pytest.fixture(scope="module")
def searcher(embedder, bundle_dir):
    return Searcher(embedder, load_bundle(bundle_dir))


def reference(searcher, vector, k, filters):
    meta = searcher.bundle.metadata
    rows = [r for r in range(len(meta)) if all(meta[r].get(c) in set(v) for c, v in filters.items() if v)]
    distances = np.linalg.norm(searcher.bundle.embeddings[rows] - vector, axis=1)
    return [rows[i] for i in np.argsort(distances, kind="stable")[:k]]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"gender": ["Women"]},
        {"articleType": ["Watches", "Tshirts"]},
        {"gender": ["Men"], "baseColour": ["Red"]},
        {"masterCategory": ["Footwear"], "gender": []},
    ],
)
@pytest.mark.parametrize("k", [1, 5, 20])
def test_filters_are_exact_among_matching_products(searcher, catalogue, filters, k):
    vector = embed_files(searcher.embedder, [catalogue / "images" / "1003.png"])
    results = searcher.matches(vector, k=k, filters=filters)[0]
    assert [m.row for m in results] == reference(searcher, vector[0], k, filters)
    for match in results:
        for column, values in filters.items():
            assert not values or match.metadata[column] in values


def test_no_match_is_a_clear_message(searcher, catalogue):
    with pytest.raises(NoMatch, match="No product in the catalogue matches these filters"):
        searcher.matches(
            embed_files(searcher.embedder, [catalogue / "images" / "1000.jpg"]),
            filters={"gender": ["Men"], "baseColour": ["Nope"]},
        )


@pytest.mark.parametrize("k", [0, MAX_K + 1])
def test_k_out_of_bounds_is_refused(k):
    with pytest.raises(ValueError, match=f"^The number of results must be between 1 and 20; got {k}.$"):
        check_k(k)


def test_unknown_filter_column_is_refused(searcher, catalogue):
    with pytest.raises(ValueError, match="Cannot filter on \\['season'\\]"):
        searcher.matches(
            embed_files(searcher.embedder, [catalogue / "images" / "1000.jpg"]), filters={"season": ["Summer"]}
        )


def test_filter_choices_and_listing(searcher, catalogue):
    assert searcher.filter_choices() == {
        "gender": ["Men", "Women"],
        "masterCategory": ["Accessories", "Apparel", "Footwear"],
        "articleType": ["Casual Shoes", "Tshirts", "Watches"],
        "baseColour": ["Black", "Blue", "Red"],
    }
    match = searcher.matches(embed_files(searcher.embedder, [catalogue / "images" / "1000.jpg"]))[0][0]
    listing = match.listing()
    assert listing["rank"] == 1 and listing["filename"] == match.filename == "1000.jpg"
    assert listing["articleType"] == "Tshirts" and listing["distance"] == pytest.approx(match.distance, abs=1e-6)


class StubEmbedder:
    def describe(self) -> dict:
        return {"architecture": "stub"}


def random_catalogue(seed: int, n: int = 400) -> tuple[list[dict], Bundle]:
    """Rows with Kaggle's filter columns holding odd values (absent, null, "", 0, 1, 1.0, True), in a Bundle."""
    rng = random.Random(seed)
    pool = ["Men", "Women", "Black", "Blue", "", "0", "1", 0, 1, 1.0, 2012, True, False, None]
    rows = []
    for _ in range(n):
        columns = [c for c in (*FILTER_COLUMNS, "season") if rng.random() < 0.8]
        rows.append({column: rng.choice(pool) for column in rng.sample(columns, len(columns))})
    rows = [json.loads(json.dumps(row)) for row in rows]  # as load_bundle's json.loads gives them
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    manifest = {"model": StubEmbedder().describe(), "preprocessing": PREPROCESSING_ID, "files": {}}
    return rows, Bundle(Path("/nonexistent"), x, [f"{i}.jpg" for i in range(n)], rows, [""] * n, manifest)


@pytest.mark.parametrize("seed", range(4))
def test_rows_matching_and_choices_agree_with_python_over_the_dicts(seed):
    rows, bundle = random_catalogue(seed)
    searcher = Searcher(StubEmbedder(), bundle)
    expected_choices = {c: sorted({str(row[c]) for row in rows if row.get(c)}) for c in FILTER_COLUMNS}
    assert searcher.filter_choices() == {c: values for c, values in expected_choices.items() if values}
    rng = random.Random(seed)
    offered = ["Men", "Women", "Black", "Blue", "", "0", "1", 0, 1, True, None, "2012", "nowhere"]
    for _ in range(60):
        filters = {c: rng.sample(offered, rng.randint(0, 3)) for c in rng.sample(FILTER_COLUMNS, rng.randint(1, 4))}
        active = {c: set(v) for c, v in filters.items() if v}
        got = searcher.rows_matching(filters)
        if not active:
            assert got is None
            continue
        assert got.dtype == np.int64
        assert got.tolist() == [r for r, meta in enumerate(rows) if all(meta.get(c) in v for c, v in active.items())]


def test_list_and_object_values_match_no_filter_and_break_nothing():
    rows, bundle = random_catalogue(7, n=20)
    rows[3]["gender"], rows[4]["gender"] = ["Men"], {"a": 1}
    searcher = Searcher(StubEmbedder(), dataclasses.replace(bundle, metadata=rows))
    got = searcher.rows_matching({"gender": ["Men", "['Men']"]}).tolist()
    assert got == [r for r, meta in enumerate(rows) if meta.get("gender") == "Men"]
    assert "['Men']" in searcher.filter_choices()["gender"]  # offered as written, as every value is


def test_the_listing_leaves_out_metadata_without_a_value():
    match = Match(1, 0, "1.jpg", 0.5, Path("1.jpg"), {"gender": "Men", "usage": "", "season": None, "year": 0})
    assert match.listing() == {"rank": 1, "filename": "1.jpg", "distance": 0.5, "gender": "Men", "year": 0}


def greedy_distinct(x: np.ndarray, query: np.ndarray, k: int, gap: float) -> list[int]:
    """The definition, by brute force: rows by distance, each kept unless closer than `gap` to one kept before."""
    kept = []
    for row in np.argsort(np.linalg.norm(x - query, axis=1), kind="stable"):
        if all(np.linalg.norm(x[row] - x[other]) >= gap for other in kept):
            kept.append(int(row))
        if len(kept) == k:
            break
    return kept


@pytest.mark.parametrize("k", [1, 3, 8])
def test_near_duplicates_are_left_out_and_the_page_filled_up_from_further_down(k):
    """Forty products, each shot three times (copies 0.01-0.02 apart): with the gap set, one shot of each."""
    rng = np.random.default_rng(3)
    originals = rng.normal(size=(40, 16))
    shots = np.concatenate([originals + rng.normal(scale=0.003, size=originals.shape) for _ in range(3)])
    x = (shots / np.linalg.norm(shots, axis=1, keepdims=True)).astype(np.float32)
    manifest = {"model": StubEmbedder().describe(), "preprocessing": PREPROCESSING_ID, "files": {}}
    bundle = Bundle(Path("/nonexistent"), x, [f"{i}.jpg" for i in range(len(x))], None, [""] * len(x), manifest)
    searcher = Searcher(StubEmbedder(), bundle)
    query = x[5] + np.float32(0.01)
    query /= np.linalg.norm(query)

    plain = searcher.matches(query[None], k)[0]
    distinct = searcher.matches(query[None], k, min_gap=0.1)[0]
    assert [m.row for m in plain] == greedy_distinct(x, query, k, 0.0)
    assert [m.row for m in distinct] == greedy_distinct(x, query, k, 0.1)
    assert [m.rank for m in distinct] == list(range(1, k + 1))
    assert len({m.row % 40 for m in distinct}) == k  # one shot of each product
    if k > 1:
        assert len({m.row % 40 for m in plain}) < k  # and without the option, the copies crowd the page
