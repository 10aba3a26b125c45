"""The index against a brute-force numpy reference and scikit-learn itself, on random unit vectors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from fashion_search.index import NeighbourIndex


def unit_rows(n, d=64, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(catalogue, query, k, rows=None):
    rows = np.arange(len(catalogue)) if rows is None else np.asarray(rows)
    distances = np.linalg.norm(catalogue[rows] - query, axis=1)
    order = np.argsort(distances, kind="stable")[:k]
    return rows[order].tolist(), distances[order]


def test_neighbours_equal_brute_force_and_sklearn():
    catalogue, queries = unit_rows(300), unit_rows(10, seed=1)
    index = NeighbourIndex(catalogue)
    reference = NearestNeighbors(n_neighbors=5, algorithm="brute", metric="euclidean").fit(catalogue)
    ref_dist, ref_idx = reference.kneighbors(queries)
    results = index.search(queries, k=5)
    for query, result, idx, dist in zip(queries, results, ref_idx, ref_dist):
        assert [n.row for n in result] == idx.tolist() == brute_force(catalogue, query, 5)[0]
        assert [n.rank for n in result] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([n.distance for n in result], dist, atol=1e-5)


@pytest.mark.parametrize("k", [1, 7, 20])
def test_k(k):
    catalogue, query = unit_rows(50), unit_rows(1, seed=2)[0]
    rows = [n.row for n in NeighbourIndex(catalogue).search(query, k=k)[0]]
    assert rows == brute_force(catalogue, query, k)[0]


def test_k_larger_than_catalogue_gives_all_rows():
    assert len(NeighbourIndex(unit_rows(3)).search(unit_rows(1, seed=3), k=5)[0]) == 3


def test_k_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        NeighbourIndex(unit_rows(3)).search(unit_rows(1), k=0)


def test_subset_search_is_exact_among_the_subset():
    catalogue, query = unit_rows(400), unit_rows(1, seed=4)[0]
    rows = np.flatnonzero(np.random.default_rng(5).random(400) < 0.1)
    index = NeighbourIndex(catalogue)
    for _ in range(2):  # the second call comes from the subset cache
        result = index.search(query, k=5, rows=rows)[0]
        expected_rows, expected_dist = brute_force(catalogue, query, 5, rows)
        assert [n.row for n in result] == expected_rows
        np.testing.assert_allclose([n.distance for n in result], expected_dist, atol=1e-5)


def test_empty_subset_gives_no_neighbours():
    assert NeighbourIndex(unit_rows(10)).search(unit_rows(2), k=5, rows=np.array([], dtype=int)) == [[], []]


def test_queries_searched_together_equal_the_reference_call_one_at_a_time():
    """The app searches concurrent queries in one call; each gets the reference design's own answer."""
    catalogue, queries = unit_rows(1500, d=2048), unit_rows(8, d=2048, seed=6)
    seed = NearestNeighbors(n_neighbors=5, algorithm="brute", metric="euclidean").fit(catalogue)
    together = NeighbourIndex(catalogue).search(queries, k=5)
    for query, result in zip(queries, together):
        distances, rows = seed.kneighbors(query[None, :])
        assert [n.row for n in result] == rows[0].tolist()
        assert [n.distance for n in result] == distances[0].tolist()


def test_scikit_learn_still_takes_the_row_norms_the_index_hands_it():
    """The norms go through private scikit-learn API: a release that moves it fails here instead of slowing every
    search silently."""
    from fashion_search import index

    assert index.sqeuclidean_row_norms is not None, "scikit-learn moved sqeuclidean_row_norms; see index.py"
    fitted = NeighbourIndex(unit_rows(50))._all
    np.testing.assert_allclose(fitted.norms, (fitted.embeddings.astype(np.float64) ** 2).sum(axis=1), rtol=1e-5)
    fitted.kneighbors(unit_rows(1, seed=9), 3)
    assert "Y_norm_squared" not in fitted.model.effective_metric_params_  # scikit-learn used (and removed) them


def test_the_subset_cache_holds_at_most_its_budget(monkeypatch):
    from fashion_search import index

    catalogue = unit_rows(400)
    monkeypatch.setattr(index, "SUBSET_CACHE_BYTES", 100 * catalogue.itemsize * catalogue.shape[1])  # 100 rows
    searcher = NeighbourIndex(catalogue)
    for start in range(0, 400, 60):
        rows = np.arange(start, min(start + 60, 400))
        assert [n.row for n in searcher.search(catalogue[0], k=3, rows=rows)[0]] == brute_force(
            catalogue, catalogue[0], 3, rows
        )[0]
        assert sum(len(subset) for subset, _ in searcher._subsets.values()) <= 100
