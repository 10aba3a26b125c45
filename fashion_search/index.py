"""The nearest-neighbour index: scikit-learn brute-force euclidean search, fitted once per bundle."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.neighbors import NearestNeighbors

try:  # scikit-learn's own squared row norms, the very numbers kneighbors would compute on every call
    from sklearn.metrics._pairwise_distances_reduction._dispatcher import sqeuclidean_row_norms
except ImportError:  # pragma: no cover - another scikit-learn layout: kneighbors computes them itself, same results
    sqeuclidean_row_norms = None

DEFAULT_K = 5
_SUBSET_CACHE_SIZE = 16  # fitted indexes over filtered subsets kept for repeat queries
# OpenMP threads for one search. scikit-learn splits the rows between its threads and waits for the slowest. At 44k
# rows on 2 cores: idle, two threads take ~17 ms and one ~30 ms; with the cores shared by other busy processes, two
# took 110-175 ms and one 30-60 ms (benchmarks/RESULTS.md, figure 2b). One never collapses, so it is the default on
# small shared machines. None = scikit-learn's default (all cores), the better choice on an idle many-core machine.
SEARCH_THREADS: int | None = 1
# Rows per block when several queries are searched in one call (scikit-learn's `pairwise_dist_chunk_size`, default
# 256). For float32 data scikit-learn copies each block of catalogue rows to float64 and multiplies it with BLAS. On
# one thread at 44k rows, 2-8 queries cost about twice as much per query in 256-row blocks as in 48-row ones
# (measured 1.9-2.2x, idle and beside a running forward pass; benchmarks/RESULTS.md, "What the figures mean" 2).
# One query was fastest with the default, so it keeps it. The block size changes no result, bit for bit
# (tests/test_index.py).
MULTI_QUERY_CHUNK = 48
_controller = None


@dataclass(frozen=True)
class Neighbour:
    rank: int  # 1 = nearest
    row: int  # row in the bundle's embeddings
    distance: float  # euclidean, between unit vectors: in [0, 2]


class NeighbourIndex:
    """`NearestNeighbors(algorithm="brute", metric="euclidean")` over the catalogue, as the reference design."""

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._all = _fit(self.embeddings)
        self._subsets: OrderedDict[bytes, tuple[np.ndarray, _Fitted | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int = DEFAULT_K, rows: np.ndarray | None = None) -> list[list[Neighbour]]:
        """The k nearest catalogue rows for each query, nearest first.

        Args:
            queries: (m, d) or (d,) float32 unit vectors.
            k: how many neighbours; fewer come back when fewer rows are eligible.
            rows: if given, only these catalogue rows are eligible (an exact filter: the nearest among them).
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if rows is None:
            subset, model = None, self._all
        else:
            subset, model = self._subset(np.unique(np.asarray(rows, dtype=np.int64)))
            if subset.size == 0:
                return [[] for _ in queries]
        n_eligible = len(self.embeddings) if subset is None else len(subset)
        distances, indices = model.kneighbors(queries, min(k, n_eligible))
        if subset is not None:
            indices = subset[indices]
        return [
            [Neighbour(rank + 1, int(row), float(dist)) for rank, (row, dist) in enumerate(zip(idx, dist_row))]
            for idx, dist_row in zip(indices, distances)
        ]

    def _subset(self, rows: np.ndarray) -> tuple[np.ndarray, _Fitted | None]:
        if rows.size == len(self.embeddings):
            return np.arange(len(self.embeddings)), self._all
        key = rows.tobytes()
        with self._lock:
            if key in self._subsets:
                self._subsets.move_to_end(key)
                return self._subsets[key]
        entry = (rows, _fit(self.embeddings[rows]) if rows.size else None)
        with self._lock:
            self._subsets[key] = entry
            while len(self._subsets) > _SUBSET_CACHE_SIZE:
                self._subsets.popitem(last=False)
        return entry


class _Fitted:
    """A fitted `NearestNeighbors(brute, euclidean)` and the squared norms of its rows, computed once at fit.

    scikit-learn's brute-force euclidean search (its ArgKmin back-end) takes the rows' squared norms as the metric
    parameter `Y_norm_squared` and otherwise recomputes them on every call: a full extra pass over the vectors. It
    removes the parameter from the dict it is given, hence a fresh dict per call. Should a concurrent call find it
    gone, scikit-learn computes the same numbers itself: the results never change, only the time.
    """

    def __init__(self, embeddings: np.ndarray):
        self.model = NearestNeighbors(
            n_neighbors=min(DEFAULT_K, max(len(embeddings), 1)), algorithm="brute", metric="euclidean"
        ).fit(embeddings)
        self.norms = sqeuclidean_row_norms(embeddings, 1) if sqeuclidean_row_norms is not None else None

    def kneighbors(self, queries: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        if self.norms is not None:
            self.model.effective_metric_params_ = {"Y_norm_squared": self.norms}
        chunk = MULTI_QUERY_CHUNK if len(queries) > 1 else None  # None: leave scikit-learn's setting alone
        # scikit-learn's configuration and OpenMP's thread count are both per calling thread, so concurrent searches
        # do not disturb each other.
        with sklearn.config_context(pairwise_dist_chunk_size=chunk):
            if SEARCH_THREADS is None:
                return self.model.kneighbors(queries, n_neighbors=n_neighbors)
            with _openmp().limit(limits=SEARCH_THREADS):
                return self.model.kneighbors(queries, n_neighbors=n_neighbors)


def _openmp():
    """threadpoolctl's handle on the OpenMP runtimes only (made once: finding them takes ms, a limit µs).

    Only OpenMP: a limit restores every library it holds on exit, and BLAS' thread count is process-wide.
    """
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController().select(user_api="openmp")
    return _controller


def _fit(embeddings: np.ndarray) -> _Fitted:
    return _Fitted(embeddings)
