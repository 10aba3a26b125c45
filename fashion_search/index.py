"""The nearest-neighbour index: scikit-learn brute-force euclidean search, fitted once per bundle."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import ThreadpoolController

# scikit-learn's own squared row norms, computed once at fit and handed to every search instead of recomputed over
# all rows per call (the search's largest avoidable cost). Private API: tests/test_index.py fails if it moves.
try:
    from sklearn.metrics._pairwise_distances_reduction._dispatcher import sqeuclidean_row_norms
except ImportError:  # pragma: no cover - the same results, computed per call
    sqeuclidean_row_norms = None

# OpenMP threads per search. On 2 cores shared with the forward pass, one thread does not wait for a descheduled
# second one (benchmarks/RESULTS.md, figure 2b). None = scikit-learn's default, all cores.
SEARCH_THREADS: int | None = 1
SUBSET_CACHE_BYTES = 256 << 20  # indexes over filtered rows, kept for repeated filters (each holds a copy of its rows)
_openmp = ThreadpoolController().select(user_api="openmp")  # only OpenMP: BLAS' thread count is process-wide


@dataclass(frozen=True)
class Neighbour:
    rank: int  # 1 = nearest
    row: int  # row in the bundle's embeddings
    distance: float  # euclidean, between unit vectors: in [0, 2]


class NeighbourIndex:
    """`NearestNeighbors(algorithm="brute", metric="euclidean")` over the catalogue, as the reference design."""

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._all = _Fitted(self.embeddings)
        self._subsets: OrderedDict[bytes, tuple[np.ndarray, _Fitted]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> list[list[Neighbour]]:
        """The k nearest catalogue rows for each query, nearest first.

        Args:
            queries: (m, d) or (d,) float32 unit vectors.
            k: how many neighbours; fewer come back when fewer rows are eligible.
            rows: if given, only these catalogue rows are eligible (an exact filter: the nearest among them).
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if rows is not None and len(rows) == 0:
            return [[] for _ in queries]
        subset, fitted = (None, self._all) if rows is None else self._subset(np.unique(np.asarray(rows, np.int64)))
        distances, indices = fitted.kneighbors(queries, min(k, len(fitted.embeddings)))
        if subset is not None:
            indices = subset[indices]
        return [
            [Neighbour(rank + 1, int(row), float(dist)) for rank, (row, dist) in enumerate(zip(idx, dist_row))]
            for idx, dist_row in zip(indices, distances)
        ]

    def _subset(self, rows: np.ndarray) -> tuple[np.ndarray | None, _Fitted]:
        if rows.size == len(self.embeddings):
            return None, self._all
        key = rows.tobytes()
        with self._lock:
            if key in self._subsets:
                self._subsets.move_to_end(key)
                return self._subsets[key]
        entry = (rows, _Fitted(self.embeddings[rows]))
        with self._lock:
            self._subsets[key] = entry
            while sum(fitted.embeddings.nbytes for _, fitted in self._subsets.values()) > SUBSET_CACHE_BYTES:
                self._subsets.popitem(last=False)
        return entry


class _Fitted:
    """A fitted `NearestNeighbors(brute, euclidean)` and the squared norms of its rows."""

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = embeddings
        self.model = NearestNeighbors(algorithm="brute", metric="euclidean").fit(embeddings)
        self.norms = sqeuclidean_row_norms(embeddings, 1) if sqeuclidean_row_norms is not None else None

    def kneighbors(self, queries: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
        if self.norms is not None:
            # scikit-learn takes the norms from here and removes them, so each call puts them back; a concurrent call
            # that finds them gone computes the same numbers itself.
            self.model.effective_metric_params_ = {"Y_norm_squared": self.norms}
        if SEARCH_THREADS is None:
            return self.model.kneighbors(queries, n_neighbors=n_neighbors)
        with _openmp.limit(limits=SEARCH_THREADS):  # per calling thread: concurrent searches do not interfere
            return self.model.kneighbors(queries, n_neighbors=n_neighbors)
