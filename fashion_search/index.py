"""The nearest-neighbour index: exact euclidean search over the catalogue, with the reference design's ranking.

Each search first scores every row in float32 with one matrix product (the memory-bound floor of a brute-force
search). Only the rows that float32's rounding cannot tell from the k nearest, those within a proven error bound of
the k-th, are then ranked by scikit-learn's `NearestNeighbors(algorithm="brute", metric="euclidean")`, the reference
design's own call: the same rows in the same order with the same distances, at about a third of the cost at 44k rows.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import ThreadpoolController

from fashion_search.vectors import StackedVectors

# Threads per search, for BLAS' matrix product and scikit-learn's OpenMP. On 2 cores shared with the forward pass,
# one thread does not wait for a descheduled second one (benchmarks/RESULTS.md, figure 2b). None = all cores.
SEARCH_THREADS: int | None = 1
SUBSET_CACHE_BYTES = 256 << 20  # indexes over filtered rows, kept for repeated filters (each holds a copy of its rows)
# float32's unit roundoff, and a factor of safety on the error bound of a length-d dot product (d * u * |x| |y|).
_UNIT_ROUNDOFF = 2.0**-24
_SAFETY = 2.0
_controller = ThreadpoolController()
_threadpools = (_controller.select(user_api="blas"), _controller.select(user_api="openmp"))


@dataclass(frozen=True)
class Neighbour:
    rank: int  # 1 = nearest
    row: int  # row in the bundle's embeddings
    distance: float  # euclidean, between unit vectors: in [0, 2]


class NeighbourIndex:
    """The k nearest catalogue rows to a query, as `NearestNeighbors(algorithm="brute", metric="euclidean")`."""

    def __init__(self, embeddings: np.ndarray | StackedVectors):
        if not isinstance(embeddings, StackedVectors):  # (a revision in pieces is searched where its files lie)
            embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.embeddings = embeddings
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
    """Rows, their float32 squared norms, and `NearestNeighbors(brute, euclidean)` fitted on them (on rows left in
    their pieces' files, fitted only on the few rows a search ranks: the same rows, order and distances)."""

    def __init__(self, embeddings: np.ndarray | StackedVectors):
        self.embeddings = embeddings
        self.stacked = isinstance(embeddings, StackedVectors)
        if self.stacked:
            self.model = None
            self.norms = embeddings.squared_norms()
        else:
            self.model = NearestNeighbors(algorithm="brute", metric="euclidean").fit(embeddings)
            self.norms = np.einsum("ij,ij->i", embeddings, embeddings)
        self.largest_norm = float(self.norms.max(initial=0.0))

    def kneighbors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rows), as `NearestNeighbors(brute, euclidean).fit(all rows).kneighbors(queries, k)`."""
        n, d = self.embeddings.shape
        with limited_threads():
            if 4 * k >= n:  # most rows would be candidates anyway
                model = self.model or NearestNeighbors(algorithm="brute", metric="euclidean").fit(self.embeddings[:])
                return model.kneighbors(queries, n_neighbors=k)
            # Squared distance less |query|^2, the same for every row of a query: the order is the same.
            if self.stacked:
                approximate = self.embeddings.scores(queries)
            else:
                approximate = self.norms[:, None] - 2 * (self.embeddings @ queries.T)
            # |error| of each approximate value <= (d + 1) u (|x|^2 + 2 |x| |q|) <= (d + 1) u (2 |x|^2 + |q|^2); a row
            # truly nearer than the k-th is at most twice that above the k-th's approximate value.
            bounds = (
                2
                * _SAFETY
                * (d + 1)
                * _UNIT_ROUNDOFF
                * (2 * self.largest_norm + np.einsum("ij,ij->i", queries, queries))
            )
            distances, rows = np.empty((len(queries), k)), np.empty((len(queries), k), dtype=np.int64)
            for j, (column, bound) in enumerate(zip(approximate.T, bounds)):
                candidates = np.flatnonzero(column <= np.partition(column, k - 1)[k - 1] + bound)
                if 4 * len(candidates) >= n and self.model is not None:
                    distances[j], rows[j] = (part[0] for part in self.model.kneighbors(queries[j : j + 1], k))
                    continue
                model = NearestNeighbors(algorithm="brute", metric="euclidean").fit(self.embeddings[candidates])
                found_distances, found = model.kneighbors(queries[j : j + 1], k)
                distances[j], rows[j] = found_distances[0], candidates[found[0]]
            return distances, rows


def limited_threads() -> contextlib.AbstractContextManager:
    """BLAS and OpenMP limited to SEARCH_THREADS for a search (the exact index's and the approximate one's)."""
    if SEARCH_THREADS is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for pool in _threadpools:
        stack.enter_context(pool.limit(limits=SEARCH_THREADS))
    return stack
