"""Search: an uploaded picture -> the nearest catalogue products, optionally among those matching filters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_search import approximate
from fashion_search.bundle import Bundle
from fashion_search.imaging import PREPROCESSING_ID
from fashion_search.index import NeighbourIndex

DEFAULT_K = 5  # results per query, as the reference design
MAX_K = 20
FILTER_COLUMNS = ("gender", "masterCategory", "articleType", "baseColour")
SEARCH_MODES = ("auto", "exact")  # auto: the bundle's approximate index when it has one; exact: always exact


class NoMatch(ValueError):
    """No catalogue product satisfies the filters."""

    MESSAGE = "No product in the catalogue matches these filters. Remove a filter and try again."


@dataclass(frozen=True)
class Match:
    rank: int
    row: int
    filename: str  # exactly as in filenames.json
    distance: float
    image_path: Path
    metadata: dict

    def listing(self) -> dict:
        """The JSON the API returns for this result; metadata without a value (None, "") is left out."""
        metadata = {key: value for key, value in self.metadata.items() if value is not None and value != ""}
        return {"rank": self.rank, "filename": self.filename, "distance": round(self.distance, 6), **metadata}


class Searcher:
    """Holds a loaded model and bundle; the index is fitted once here, never per query."""

    def __init__(self, embedder, bundle: Bundle, search: str = "auto"):
        bundle.check_compatible(embedder.describe(), PREPROCESSING_ID)
        self.embedder = embedder
        self.bundle = bundle
        self.index = open_index(bundle, search)
        # Each filter column with a value to offer -> its distinct values, each with the rows that hold it.
        groups = {column: _group_rows(bundle.metadata, column) for column in FILTER_COLUMNS}
        self._groups = {column: pairs for column, pairs in groups.items() if any(value for value, _ in pairs)}

    def filter_choices(self) -> dict[str, list[str]]:
        """For each filterable column the bundle has: its values, sorted."""
        return {column: sorted({str(value) for value, _ in groups if value}) for column, groups in self._groups.items()}

    def matches(
        self, vectors: np.ndarray, k: int = DEFAULT_K, filters: dict | None = None, min_gap: float = 0.0
    ) -> list[list[Match]]:
        """The k nearest products for each query vector, among those matching `filters` (exact, not a post-filter).

        With `min_gap` > 0, a product closer than `min_gap` to a better-ranked result is left out (a near-duplicate
        shot), and the results are filled up to k from further down.
        """
        rows = self.rows_matching(filters)
        if rows is not None and rows.size == 0:
            raise NoMatch(NoMatch.MESSAGE)
        if min_gap > 0:
            return [self._distinct(vector, k, rows, min_gap) for vector in np.atleast_2d(vectors)]
        return [
            [self.match(n.row, n.rank, n.distance) for n in neighbours]
            for neighbours in self.index.search(vectors, k=k, rows=rows)
        ]

    def _distinct(self, vector: np.ndarray, k: int, rows: np.ndarray | None, min_gap: float) -> list[Match]:
        eligible = len(self.bundle.filenames) if rows is None else len(rows)
        fetch = min(eligible, 4 * k)
        while True:
            kept: list = []
            for neighbour in self.index.search(vector, k=fetch, rows=rows)[0]:
                shown = self.bundle.embeddings[[n.row for n in kept]]
                if np.all(np.linalg.norm(shown - self.bundle.embeddings[neighbour.row], axis=1) >= min_gap):
                    kept.append(neighbour)
                    if len(kept) == k:
                        break
            if len(kept) == k or fetch == eligible:
                return [self.match(n.row, rank, n.distance) for rank, n in enumerate(kept, 1)]
            fetch = min(eligible, 4 * fetch)

    def rows_matching(self, filters: dict[str, list[str]] | None) -> np.ndarray | None:
        """Rows whose metadata matches every given filter (a value among the chosen ones); None = no filter."""
        active = {column: set(values) for column, values in (filters or {}).items() if values}
        if not active:
            return None
        unknown = set(active) - set(self._groups)
        if unknown:
            raise ValueError(f"Cannot filter on {sorted(unknown)}: the catalogue has {sorted(self._groups)}.")
        mask = np.ones(len(self.bundle.filenames), dtype=bool)
        for column, chosen in active.items():
            matching = np.zeros_like(mask)
            for value, rows in self._groups[column]:
                if _among(value, chosen):
                    matching[rows] = True
            mask &= matching
        return np.flatnonzero(mask).astype(np.int64)

    def match(self, row: int, rank: int = 0, distance: float = 0.0) -> Match:
        """Catalogue row `row` as a result (rank 0, distance 0: the product itself)."""
        metadata = self.bundle.metadata[row] if self.bundle.metadata is not None else {}
        return Match(rank, row, self.bundle.filenames[row], distance, self.bundle.image_path(row), metadata)


def open_index(bundle: Bundle, search: str = "auto") -> NeighbourIndex | approximate.ApproximateIndex:
    """The one place the search is chosen: the bundle's approximate index, unless it has none or `search` is
    "exact"; both have the same `search(queries, k, rows)`.

    Raises:
        approximate.IndexFileError: the bundle's index does not belong to its embeddings.
    """
    if search not in SEARCH_MODES:
        raise ValueError(f"search must be one of {SEARCH_MODES}, got {search!r}")
    if search == "auto" and bundle.has_index:
        return approximate.load(bundle.root, bundle.embeddings)
    return NeighbourIndex(bundle.embeddings)


def check_k(k: int) -> None:
    """Raise ValueError unless 1 <= k <= MAX_K; the message is for people."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"The number of results must be between 1 and {MAX_K}; got {k}.")


def _group_rows(metadata: list[dict] | None, column: str) -> list[tuple[object, np.ndarray]]:
    """[(value, the rows holding it)] for each distinct value of `column`; a row without the column holds None."""
    groups: dict[tuple, tuple[object, list[int]]] = {}
    for row, values in enumerate(metadata or []):
        value = values.get(column)
        groups.setdefault((type(value), repr(value)), (value, []))[1].append(row)  # 1, 1.0 and True stay apart
    return [(value, np.array(rows, dtype=np.int64)) for value, rows in groups.values()]


def _among(value, chosen: set) -> bool:
    """`value in chosen`, where a list or object value (unhashable) is in no set of filter choices."""
    try:
        return value in chosen
    except TypeError:
        return False
