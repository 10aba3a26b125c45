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


def reference_call(catalogue, queries, k):
    """The reference design's call: (distances, rows) for each query."""
    return NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(catalogue).kneighbors(queries)


def assert_reference_answer(catalogue, queries, k, rows=None):
    """The index gives the reference design's rows in its order, and its distances to float rounding (scikit-learn's
    float64 arithmetic rounds differently for different numbers of rows: near 0, where it cancels, by ~1e-8)."""
    rows = np.arange(len(catalogue)) if rows is None else rows
    distances, found = reference_call(catalogue[rows], queries, k)
    results = NeighbourIndex(catalogue).search(queries, k=k, rows=None if len(rows) == len(catalogue) else rows)
    for result, want_distances, want_rows in zip(results, distances, found):
        assert [n.row for n in result] == rows[want_rows].tolist()
        np.testing.assert_allclose([n.distance for n in result], want_distances, rtol=0, atol=1e-6)


def test_near_ties_that_float32_cannot_order_come_in_the_reference_designs_order():
    """Rows whose distances to the query differ by less than float32 can resolve: the float32 scores alone would
    order them by rounding noise; the rows within the error bound are ranked as the reference design ranks them."""
    rng = np.random.default_rng(21)
    base = unit_rows(1, d=2048, seed=22)[0].astype(np.float64)
    directions = rng.normal(size=(60, 2048))
    near = base + 1e-5 * rng.random((60, 1)) * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    catalogue = np.concatenate([unit_rows(3000, d=2048, seed=23), near])[rng.permutation(3060)]
    queries = np.stack([base.astype(np.float32), near[0], near[7]])
    for k in (1, 5, 12):
        assert_reference_answer(catalogue, queries, k)
    np.testing.assert_equal(  # the nearest 12 of the first query are all near-ties, ~1e-5 apart at most
        np.sort(reference_call(catalogue, queries[:1], 12)[0][0]) < 2e-5, True
    )


def test_the_reference_answer_at_44k_rows_filtered_or_not():
    """The real catalogue's size (random unit vectors: the nearest rows are close together, many candidates)."""
    catalogue, queries = unit_rows(44_000, d=2048, seed=31), unit_rows(6, d=2048, seed=32)
    queries[3] = catalogue[1234]  # a catalogue product as the query: distance 0 first
    assert_reference_answer(catalogue, queries, 5)
    assert_reference_answer(catalogue, queries[:2], 20)
    assert_reference_answer(catalogue, queries[:2], 5, rows=np.flatnonzero(np.arange(44_000) % 7 == 3))


def test_many_equally_near_rows_fall_back_to_the_reference_call():
    """Duplicated rows: every one is a candidate, so the whole catalogue is searched by the reference call."""
    catalogue = np.repeat(unit_rows(2, d=256, seed=41), [150, 50], axis=0)
    assert_reference_answer(catalogue, unit_rows(3, d=256, seed=42), 5)
    assert_reference_answer(catalogue, catalogue[[0, 160]], 5)


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


# ---------------------------------------------------------------- a revision in pieces (fashion_search.vectors)


def in_pieces(catalogue, folder, size, removed_rows):
    """`catalogue` written as a revision in pieces: files of `size` rows, each also holding copies of `removed_rows`
    (the queries themselves: nearer than any product) marked as removed; opened as the app opens them."""
    from fashion_search.vectors import list_vector_files, open_stacked, write_vector_list

    rng, listed = np.random.default_rng(len(catalogue)), []
    for number, start in enumerate(range(0, len(catalogue), size)):
        live = catalogue[start : start + size]
        at = np.sort(rng.choice(len(live) + len(removed_rows), len(removed_rows), replace=False))
        rows = np.empty((len(live) + len(at), catalogue.shape[1]), dtype=np.float32)
        mask = np.zeros(len(rows), dtype=bool)
        mask[at] = True
        rows[mask], rows[~mask] = removed_rows, live
        np.save(folder / f"{number}.npy", rows)
        listed.append((folder / f"{number}.npy", folder / f"{number}.npy", "", len(rows), at.tolist()))
    write_vector_list(folder, listed, catalogue.shape[1])
    return open_stacked(list_vector_files(folder), catalogue.shape[1])


def test_a_revision_in_pieces_gets_the_reference_answer_and_never_a_removed_row(tmp_path):
    catalogue, queries = unit_rows(5000, d=2048, seed=51), unit_rows(6, d=2048, seed=52)
    queries[3] = catalogue[4321]  # a product as the query: itself first, at distance 0
    stacked = in_pieces(catalogue, tmp_path, 1024, queries)
    np.testing.assert_array_equal(stacked[:], catalogue)
    together, alone = NeighbourIndex(stacked), NeighbourIndex(catalogue)
    rows = np.flatnonzero(np.arange(5000) % 7 == 3)
    for k, eligible in ((5, None), (20, None), (5, rows)):
        assert together.search(queries, k, eligible) == alone.search(queries, k, eligible)
        for result, (distances, found) in zip(
            together.search(queries, k, eligible),
            zip(*reference_call(catalogue if eligible is None else catalogue[eligible], queries, k)),
        ):
            want = found if eligible is None else eligible[found]
            assert [n.row for n in result] == want.tolist()
            np.testing.assert_allclose([n.distance for n in result], distances, rtol=0, atol=1e-6)


def test_a_small_revision_in_pieces_and_its_near_ties_get_the_reference_answer(tmp_path):
    tiny = unit_rows(12, d=32, seed=53)
    (tmp_path / "tiny").mkdir()
    assert NeighbourIndex(in_pieces(tiny, tmp_path / "tiny", 5, tiny[:2])).search(tiny[:3], 5) == NeighbourIndex(
        tiny
    ).search(tiny[:3], 5)
    duplicated = np.repeat(unit_rows(2, d=256, seed=41), [150, 50], axis=0)  # every row a candidate
    queries = unit_rows(3, d=256, seed=42)
    (tmp_path / "ties").mkdir()
    stacked = in_pieces(duplicated, tmp_path / "ties", 64, queries)
    assert NeighbourIndex(stacked).search(queries, 5) == NeighbourIndex(duplicated).search(queries, 5)


def test_the_approximate_index_over_pieces_answers_as_over_one_array(tmp_path):
    from fashion_search import approximate

    catalogue, queries = unit_rows(3000, d=64, seed=54), unit_rows(8, d=64, seed=55)
    stacked = in_pieces(catalogue, tmp_path, 700, queries)
    data = approximate.train(catalogue, lists=16, dims=16)
    rows = np.flatnonzero(np.arange(3000) % 3 == 0)
    for eligible in (None, rows):
        assert approximate.ApproximateIndex(stacked, data).search(queries, 5, eligible) == approximate.ApproximateIndex(
            catalogue, data
        ).search(queries, 5, eligible)


def test_two_revisions_sharing_a_piece_share_its_norms(tmp_path):
    """A swap computes what it needs only for the new pieces: the norms of a file the old snapshot uses are reused."""
    from fashion_search.vectors import list_vector_files, open_stacked, write_vector_list

    old, new = unit_rows(100, d=16, seed=56), unit_rows(30, d=16, seed=57)
    np.save(tmp_path / "old.npy", old)
    np.save(tmp_path / "new.npy", new)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old_file, new_file = tmp_path / "old.npy", tmp_path / "new.npy"  # (as their rows.json too: not read here)
    write_vector_list(tmp_path / "a", [(old_file, old_file, "", 100, [])], 16)
    write_vector_list(tmp_path / "b", [(old_file, old_file, "", 100, [5, 9]), (new_file, new_file, "", 30, [])], 16)
    first = open_stacked(list_vector_files(tmp_path / "a"), 16)
    second = open_stacked(list_vector_files(tmp_path / "b"), 16)
    np.testing.assert_allclose(first.squared_norms(), 1, atol=1e-5)
    assert len(second.squared_norms()) == 128
    assert second._keep[0] is first._keep[0] and second._keep[1] is not first._keep[0]


def test_rows_checked_as_read_fail_only_the_reads_that_touch_a_damaged_one(tmp_path):
    """A mounted catalogue's vectors are checked row by row as they are read, against rows.json's digests."""
    import hashlib

    from fashion_search.bundle import BundleHashMismatch

    catalogue = unit_rows(300, d=16, seed=58)
    stacked = in_pieces(catalogue, tmp_path, 100, catalogue[:0])
    digests = [hashlib.sha256(row.tobytes()).hexdigest()[:16] for row in catalogue]
    with open(stacked.parts[1][0].filename, "r+b") as handle:  # row 150 (the second file's row 50): a byte changed
        handle.seek(-(50 * 16 * 4) + 1, 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 1]))
    for part in range(3):
        stacked.check_as_read(part, digests[100 * part : 100 * part + 100], f"piece {part}")

    np.testing.assert_array_equal(stacked[[0, 99, 149, 151, 299]], catalogue[[0, 99, 149, 151, 299]])
    with pytest.raises(BundleHashMismatch, match="piece 1: vector row 50 "):
        stacked[[3, 150]]
    with pytest.raises(BundleHashMismatch, match="piece 1"):
        stacked.scores(catalogue[:1])  # every row is read: every row is checked
