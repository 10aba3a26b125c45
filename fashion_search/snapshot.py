"""One loaded revision of a catalogue, served whole: a request reads the current snapshot once and uses only it.

    snapshot = open_snapshot(embedder, bundle, images, revision="<commit sha>", source="OWNER/NAME")
    warm(snapshot)                 # one search, so the first request after a swap does not pay for it
    snapshot.searcher.matches(vectors, k, filters)
    snapshot.row_of("1163.jpg")    # products are named, not numbered, across revisions

Everything a request reads about the catalogue (the vectors and the index, the filter groups, the pictures, the file
names, the count and the revision the page shows) is in one immutable object, so that replacing the catalogue being
served is one assignment (Recommender.swap) and no request mixes two revisions (Lucene's SearcherManager).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fashion_search.bundle import Bundle
from fashion_search.images import CatalogueImages
from fashion_search.search import DEFAULT_K, Searcher


@dataclass(frozen=True)
class CatalogueInfo:
    source: str  # "demo" or the FASHION_CATALOG value
    name: str  # what the page calls it: the Hub repo, or the bundle folder's name (not the server's path)
    count: int
    weights: str  # the embedder fingerprint
    random_weights: bool
    precision: str = "float32"  # the model's arithmetic: "float32" (the reference design's) or "bfloat16"
    revision: str = ""  # the Hub commit, or a folder's manifest digest; "" for a catalogue that is not followed
    live_since: str = ""  # when this revision began to be served, UTC, ISO 8601 to the second
    search: str = ""  # how it is searched, for the page: "" (every product) or the approximate index's description


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: the batcher groups queries by snapshot
class Snapshot:
    searcher: Searcher  # the bundle, its index and filter groups
    images: CatalogueImages  # where each product's picture comes from
    rows: dict[str, int]  # file name -> row
    info: CatalogueInfo
    filter_choices: dict[str, list[str]] = field(repr=False)  # {column: sorted values}, only columns it has

    @property
    def bundle(self) -> Bundle:
        return self.searcher.bundle

    @property
    def revision(self) -> str:
        return self.info.revision

    def row_of(self, name: object) -> int | None:
        """The row of the product with this file name, or None (not a name, or not in this revision)."""
        return self.rows.get(name) if isinstance(name, str) else None


def open_snapshot(
    embedder,
    bundle: Bundle,
    images: CatalogueImages,
    *,
    search: str = "auto",
    source: str = "demo",
    name: str = "demo",
    revision: str = "",
) -> Snapshot:
    """The snapshot of a loaded, verified bundle, searched by `embedder`'s vectors; built here and nowhere else.

    Raises:
        BundleMismatch: the bundle was made with other weights, precision or preprocessing than `embedder`'s.
        approximate.IndexFileError: its approximate index does not belong to its vectors.
    """
    searcher = Searcher(embedder, bundle, search)
    return snapshot_of(searcher, images, None, source=source, name=name, revision=revision)


def snapshot_of(
    searcher: Searcher,
    images: CatalogueImages,
    info: CatalogueInfo | None = None,
    *,
    source: str = "demo",
    name: str = "demo",
    revision: str = "",
) -> Snapshot:
    """The snapshot of a searcher already made (open_snapshot's, or one a test or benchmark made by hand)."""
    from fashion_search import approximate  # (numpy only)

    bundle, fingerprint = searcher.bundle, getattr(searcher.embedder, "fingerprint", "")
    info = info or CatalogueInfo(
        source=source,
        name=name,
        count=len(bundle.filenames),
        weights=fingerprint,
        random_weights=fingerprint.startswith("random"),
        precision=getattr(searcher.embedder, "precision", "float32"),
        revision=revision,
        live_since=datetime.now(UTC).isoformat(timespec="seconds"),
        search=approximate.describe(searcher.index) if isinstance(searcher.index, approximate.ApproximateIndex) else "",
    )
    rows = {filename: row for row, filename in enumerate(bundle.filenames)}
    return Snapshot(searcher, images, rows, info, searcher.filter_choices())


def warm(snapshot: Snapshot) -> None:
    """One search over the whole catalogue (no model): the index's and the vectors' pages are read before a swap."""
    dim = snapshot.bundle.embeddings.shape[1]
    vector = np.full((1, dim), 1 / np.sqrt(dim), dtype=np.float32)
    snapshot.searcher.matches(vector, DEFAULT_K)


def display_name(catalogue: str | None) -> str:
    """What the page calls a catalogue: "demo", a Hub repo as given, or a folder's name (not the server's path)."""
    from fashion_search.config import looks_like_hub_spec

    if catalogue is None:
        return "demo"
    is_folder = Path(catalogue).expanduser().exists()
    return catalogue if looks_like_hub_spec(catalogue) and not is_folder else Path(catalogue).name
