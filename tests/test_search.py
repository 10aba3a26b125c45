"""Search: exact filters against a brute-force reference, top-k bounds, and the no-match message."""

from __future__ import annotations

import numpy as np
import pytest

from fashion_search.bundle import load_bundle
from fashion_search.search import MAX_K, NoMatch, Searcher


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
    [{}, {"gender": ["Women"]}, {"articleType": ["Watches", "Tshirts"]}, {"gender": ["Men"], "baseColour": ["Red"]},
     {"masterCategory": ["Footwear"], "gender": []}],
)
@pytest.mark.parametrize("k", [1, 5, 20])
def test_filters_are_exact_among_matching_products(searcher, catalogue, filters, k):
    vector = searcher.embed([catalogue / "images" / "1003.png"])
    results = searcher.matches(vector, k=k, filters=filters)[0]
    assert [m.row for m in results] == reference(searcher, vector[0], k, filters)
    for match in results:
        for column, values in filters.items():
            assert not values or match.metadata[column] in values


def test_no_match_is_a_clear_message(searcher, catalogue):
    with pytest.raises(NoMatch, match="No product in the catalogue matches these filters"):
        searcher.recommend(catalogue / "images" / "1000.jpg", filters={"gender": ["Men"], "baseColour": ["Nope"]})


@pytest.mark.parametrize("k", [0, MAX_K + 1])
def test_k_out_of_bounds_is_refused(searcher, catalogue, k):
    with pytest.raises(ValueError, match="k must be between 1 and 20"):
        searcher.recommend(catalogue / "images" / "1000.jpg", k=k)


def test_unknown_filter_column_is_refused(searcher, catalogue):
    with pytest.raises(ValueError, match="Cannot filter on \\['season'\\]"):
        searcher.recommend(catalogue / "images" / "1000.jpg", filters={"season": ["Summer"]})


def test_filter_choices_and_listing(searcher, catalogue):
    assert searcher.filter_choices() == {
        "gender": ["Men", "Women"], "masterCategory": ["Accessories", "Apparel", "Footwear"],
        "articleType": ["Casual Shoes", "Tshirts", "Watches"], "baseColour": ["Black", "Blue", "Red"],
    }
    match = searcher.recommend(catalogue / "images" / "1000.jpg")[0]
    listing = match.listing()
    assert listing["rank"] == 1 and listing["filename"] == match.filename == "1000.jpg"
    assert listing["articleType"] == "Tshirts" and listing["distance"] == pytest.approx(match.distance, abs=1e-6)
