"""What the app serves, without the UI: start-up (model, catalogue, warm-up), batched queries, captions and listings.

Each request is its own Gradio event, decoded and checked on its own, so a bad upload fails only itself (Gradio's
`batch=True` fails a whole batch for one bad input). The heavy steps are shared instead: requests that arrive while
the model is busy go through it together in one forward pass, and then search together in one scikit-learn call.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import weakref
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from fashion_search import live
from fashion_search.bundle import Bundle, BundleError
from fashion_search.catalogue import CatalogueError
from fashion_search.config import ConfigError, Settings, catalogue_folder
from fashion_search.images import CatalogueImages, FolderImages, load_catalogue, media_type
from fashion_search.imaging import IMAGE_SIZE, Box, ImageSource, load_input, parse_region
from fashion_search.pieces import HEAD
from fashion_search.pipeline import PrecomputeError
from fashion_search.search import DEFAULT_K, Match, NoMatch, Searcher, check_k
from fashion_search.snapshot import CatalogueInfo, Snapshot, display_name, open_snapshot, snapshot_of

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 8  # queries per forward pass and per search; the app runs as many requests at once
MAX_GAP = 0.5  # the largest near-duplicate distance offered: unit vectors that far apart are different pictures
MAX_UPLOAD = "20mb"  # Gradio refuses bigger uploads before they reach us
# Gradio keeps a copy of the page's config for each session (each browser tab, each gradio_client Client), up to
# 10,000 by default. This app keeps no state in a session, so it keeps fewer; a dropped session is made anew.
SESSION_CAPACITY = 1000
NAME_COLUMN = "productDisplayName"
DETAIL_COLUMNS = ("articleType", "baseColour", "gender")  # shown under the name, where the catalogue has them
NO_IMAGE = "Please upload a photo of a product first (or take one with the webcam, or paste one)."


def filter_parameter(column: str) -> str:
    """The API's name for a filter column, in snake_case: "articleType" -> "article_type".

    gradio_client prints parameter names lower-cased, so a camelCase name could not be called as printed. Only the
    API's names change: the bundle, the searches and the listings keep the catalogue's column names."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", column).lower()


class StartupError(RuntimeError):
    """The app cannot start; the message says why and what to do."""


class QueryError(ValueError):
    """A request that cannot be answered (no picture, not a picture, no product matches); the message is for people."""


class Batcher:
    """Runs the items that arrive while it is busy together, in one call of `run_batch`, in a thread of its own.

    Nothing waits for a batch to fill: a lone item goes straight through; items that arrive during a call (up to
    `max_batch_size`) make up the next one. `run_batch(items)` returns one result per item, an exception instance
    for an item that failed; if it raises, every item of the batch gets that exception. Either way it keeps serving.
    """

    def __init__(self, run_batch, max_batch_size: int = MAX_BATCH_SIZE, name: str = "batcher"):
        self._run_batch = run_batch  # list of items -> list of results (or exceptions), one per item
        self._max = max_batch_size
        self._queue: queue.SimpleQueue[tuple[object, Future]] = queue.SimpleQueue()
        self.batch_sizes: Counter[int] = Counter()  # how many calls of each size so far
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, item):
        """Queue one item; block until its batch is done; return its result or raise its exception."""
        future = Future()
        self._queue.put((item, future))
        return future.result()

    def _next_batch(self) -> list[tuple[object, Future]]:
        batch = [self._queue.get()]
        while len(batch) < self._max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            try:
                results = self._run_batch([item for item, _ in batch])
                if len(results) != len(batch):  # never leave a request waiting for a result that will not come
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            except BaseException as exc:  # hand the failure to every waiting request; keep serving
                results = [exc] * len(batch)
            self.batch_sizes[len(batch)] += 1
            for (_, future), result in zip(batch, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            del batch, results, _  # not kept while waiting for the next batch: a query holds its catalogue snapshot


@dataclass(frozen=True)
class _Query:
    snapshot: Snapshot  # the revision it is answered from, whole
    vector: np.ndarray  # (2048,) float32, a unit vector
    k: int
    filters: tuple  # canonical: ((column, (value, ...)), ...), sorted, empty choices left out
    min_gap: float = 0.0  # > 0: near-duplicates of a better result left out (Searcher.matches)


DAMAGED = (
    "Part of the catalogue's files is damaged on disk, so this search could not be answered; the app's log says "
    "which file. Other searches still work: try another picture or product, and tell the catalogue's owner."
)


def _query_error(cause: Exception, message: str | None = None) -> QueryError:
    error = QueryError(str(cause) if message is None else message)
    error.__cause__ = cause
    return error


def _canonical(filters: dict[str, list[str]] | None) -> tuple:
    """The same key for the same filters, whatever the order of columns and values (repr: never a TypeError)."""
    return tuple(
        sorted((column, tuple(sorted(values, key=repr))) for column, values in (filters or {}).items() if values)
    )


class Recommender:
    """A model and the catalogue snapshot being served, shared by every request; safe to call from many threads.

    A request reads `snapshot` once and passes it on (`snapshot=`) to the end: `swap` replaces it in one assignment,
    requests in flight finish on the one they took, and its files go when the last of them lets go of it."""

    def __init__(
        self,
        snapshot: Snapshot | Searcher,
        info: CatalogueInfo | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        images: CatalogueImages | None = None,
    ):
        # Pillow registers its file-format plugins on the first Image.open, and that is not thread-safe: two requests
        # decoding at once can see a half-registered plugin (KeyError: 'MPO'). Register them all now, in one thread.
        Image.init()
        if isinstance(snapshot, Searcher):  # a searcher loaded by hand (tests, benchmarks)
            snapshot = snapshot_of(snapshot, images or FolderImages(snapshot.bundle), info)
        self.embedder = snapshot.searcher.embedder
        self.snapshot = snapshot  # the one reference requests read
        self._live: weakref.WeakValueDictionary[str, Snapshot] = weakref.WeakValueDictionary()  # revision -> snapshot
        self._live[snapshot.revision] = snapshot
        self.embedding = Batcher(self._embed_batch, max_batch_size, name="embed-batcher")
        self.searching = Batcher(self._search_batch, max_batch_size, name="search-batcher")
        # The API's name of each filter column -> the column: the endpoints' parameters, fixed at start.
        self.filter_columns = {filter_parameter(column): column for column in snapshot.filter_choices}

    # What the current snapshot holds, for callers that read one thing once.
    searcher = property(lambda self: self.snapshot.searcher)
    images = property(lambda self: self.snapshot.images)
    info = property(lambda self: self.snapshot.info)
    filter_choices = property(lambda self: self.snapshot.filter_choices)

    @property
    def bundle(self) -> Bundle:
        return self.snapshot.bundle

    def swap(self, snapshot: Snapshot) -> Snapshot:
        """Serve `snapshot` from the next request on; the one it replaces is returned (and kept by its users)."""
        self._live[snapshot.revision] = snapshot
        old, self.snapshot = self.snapshot, snapshot
        return old

    def picture(self, revision: str, name: str) -> tuple[bytes, str] | None:
        """(bytes, media type) of product `name`'s picture in `revision`, while a snapshot of it is still in use (the
        file route: fashion_search.image_route); None for anything else."""
        snapshot = self._live.get(revision)
        row = snapshot.row_of(name) if snapshot is not None and snapshot.images.served_by_route else None
        return None if row is None else (snapshot.images.read(row), media_type(name))

    def picture_now(self, name: str) -> str | None:
        """The file route's path of product `name`'s picture in the revision served now, or None (no such product
        now): where the route sends a request for a revision no longer served, so a picture's URL outlives it."""
        snapshot = self.snapshot
        row = snapshot.row_of(name) if snapshot.images.served_by_route else None
        return None if row is None else snapshot.images.route_path(row)

    def warm_up(self) -> None:
        """One query end to end (a white picture), so the first visitor does not pay for graph tracing."""
        self.recommend(Image.new("RGB", (IMAGE_SIZE[1], IMAGE_SIZE[0]), "white"))

    def recommend(
        self,
        image: ImageSource | None,
        k: int = DEFAULT_K,
        filters: dict[str, list[str]] | None = None,
        min_gap: float = 0.0,
        region: Box | str | None = None,
        snapshot: Snapshot | None = None,
    ) -> list[Match]:
        """The k most similar products to `image` (or to its `region`: left, top, right, bottom in pixels) among
        those matching `filters`; with `min_gap` > 0, without products closer than that to a better result
        (near-duplicate shots). From `snapshot` (default: the one served now).

        Raises:
            QueryError: no image, an image that cannot be read, a region that is not a box within the picture, k or
                min_gap out of range, or no product matching the filters.
        """
        snapshot = snapshot or self.snapshot
        if image is None:
            raise QueryError(NO_IMAGE)
        if not 0 <= min_gap <= MAX_GAP:
            raise QueryError(f"The near-duplicate distance must be between 0 and {MAX_GAP}; got {min_gap}.")
        try:
            check_k(k)
            array = load_input(image, parse_region(region))
        except ValueError as exc:  # k out of range, an ImageError or a RegionError
            raise QueryError(str(exc)) from exc
        vector = self.embedding.submit(array)
        return self.searching.submit(_Query(snapshot, vector, k, _canonical(filters), min_gap))

    def similar(
        self,
        filename: str,
        k: int = DEFAULT_K,
        filters: dict[str, list[str]] | None = None,
        snapshot: Snapshot | None = None,
    ) -> tuple[Match, list[Match]]:
        """(the product, the k products most like it among those matching `filters`), from its stored vector.

        Raises:
            QueryError: a file name not in the catalogue (now), k out of range, or no other product matching the
                filters.
        """
        snapshot = snapshot or self.snapshot
        row = snapshot.row_of(filename)
        if row is None:
            example = snapshot.bundle.filenames[0]
            raise QueryError(
                f"No product {filename!r} in this catalogue (revision {snapshot.revision[:12]}, "
                f"{snapshot.info.count:,} products): it was removed, or the name is not one of its file names. Give a "
                f"product's filename as a result's listing shows it, e.g. {example!r}."
            )
        try:
            check_k(k)
        except ValueError as exc:
            raise QueryError(str(exc)) from exc
        # One more than asked, as the product itself is usually its own nearest; the k nearest others stay exact.
        try:
            vector = snapshot.bundle.embeddings[row]
        except BundleError as exc:  # (a mounted catalogue's file, damaged: checked as it is read)
            log.error("Catalogue %s: %s", snapshot.info.name, exc)
            raise QueryError(DAMAGED) from exc
        query = _Query(snapshot, vector, k + 1, _canonical(filters))
        others = [match for match in self.searching.submit(query) if match.row != row][:k]
        if not others:
            raise QueryError(NoMatch.MESSAGE)
        product = snapshot.searcher.match(row)
        return product, [dataclasses.replace(match, rank=rank) for rank, match in enumerate(others, 1)]

    def product_at(self, path: str | Path | None, snapshot: Snapshot | None = None) -> Match | None:
        """The catalogue product whose picture is at `path` (a result clicked to become the query), else None."""
        snapshot = snapshot or self.snapshot
        row = snapshot.row_of(snapshot.images.name_of_file(path)) if path is not None else None
        return None if row is None else snapshot.searcher.match(row)

    def _embed_batch(self, arrays: list[np.ndarray]) -> np.ndarray:
        """One forward pass: (n, 224, 224, 3) preprocessed pictures -> (n, 2048) unit vectors."""
        return self.embedder.embed(np.stack(arrays))

    def _search_batch(self, queries: list[_Query]) -> list[list[Match] | QueryError]:
        """One index search per (snapshot, k, filters, min_gap) among the queries; an error stays in its group."""
        groups: dict[tuple, list[int]] = {}
        for position, query in enumerate(queries):
            groups.setdefault((query.snapshot, query.k, query.filters, query.min_gap), []).append(position)
        results: list = [None] * len(queries)
        for (snapshot, k, filters, min_gap), positions in groups.items():
            vectors = np.stack([queries[p].vector for p in positions])
            try:
                chosen = {column: list(values) for column, values in filters}
                found = snapshot.searcher.matches(vectors, k, chosen, min_gap)
                _settle(snapshot)
            except (NoMatch, ValueError) as exc:  # no product matches, or a column the catalogue does not have
                found = [_query_error(exc) for _ in positions]  # one each: raising sets its traceback
            except BundleError as exc:  # a mounted catalogue's file found damaged as it was read: this answer fails
                log.error("Catalogue %s: %s", snapshot.info.name, exc)
                found = [_query_error(exc, DAMAGED) for _ in positions]  # (not its text: it names the server's files)
            for position, matches in zip(positions, found):
                results[position] = matches
        return results


def _settle(snapshot: Snapshot) -> None:
    """Once a snapshot has answered: an index read where a mounted catalogue's pieces lie is put together in the
    background (approximate.ApproximateIndex.settle; a start reads only what its first answers need)."""
    settle = getattr(snapshot.searcher.index, "settle", None)
    if settle is not None:
        settle()


def load_recommender(settings: Settings, *, warm_up: bool = True) -> Recommender:
    """Load the model and the catalogue once; the demo catalogue is built (or reused from the cache) when none is set.
    A catalogue that can change (a bundle folder, a Hub branch) is followed every `settings.refresh` seconds
    (fashion_search.live) when that is above 0.

    Raises:
        StartupError: the weights, the catalogue or the Hub failed; the message says how to fix it.
    """
    from fashion_search.demo import demo_bundle
    from fashion_search.embedder import Embedder, PrecisionUnavailable, WeightsUnavailable  # TensorFlow loads here

    source = None
    try:
        # A given catalogue is checked before the model is built, so a broken one is refused in seconds.
        # A Hub revision's pictures stay in its shards (images: where each product's picture comes from).
        bundle, images, revision, source = _load_catalogue(settings) if settings.catalogue else (None,) * 4
        precision = settings.precision or (bundle.precision if bundle is not None else "float32")
        try:
            embedder = Embedder.load(settings.weights, precision=precision)
        except PrecisionUnavailable as exc:
            if settings.precision is None and bundle is not None:  # the precision came from the catalogue
                raise PrecisionUnavailable(
                    f"The catalogue was made in {precision} and FASHION_PRECISION is unset, so the app runs it in "
                    f"{precision}: {exc} To serve it in float32, rebuild it with precompute.py --precision float32."
                ) from exc
            raise
        if bundle is None:
            bundle = demo_bundle(embedder, settings.cache_dir)
            revision = live.manifest_digest(bundle.root)
            images = FolderImages(bundle, revision)  # served by the file route, by revision and name
        snapshot = open_snapshot(
            embedder,
            bundle,
            images,
            search=settings.search,
            source=settings.catalogue or "demo",
            name=display_name(settings.catalogue),
            revision=revision,
        )
    except (WeightsUnavailable, PrecisionUnavailable, BundleError, ConfigError, PrecomputeError, CatalogueError) as exc:
        raise StartupError(source.shown(str(exc)) if source else str(exc)) from exc
    except live.SourceUnavailable as exc:
        raise StartupError(f"The catalogue {settings.catalogue} cannot be read now: {exc}") from exc
    except OSError as exc:
        raise StartupError(f"Could not read or write {exc.filename or 'a file'}: {exc.strerror or exc}.") from exc
    if snapshot.info.search:  # how far the approximate index can be trusted, measured when it was built
        log.info("Catalogue %s is searched with an %s.", snapshot.info.name, snapshot.info.search)
    recommender = Recommender(snapshot)
    if warm_up:
        recommender.warm_up()
    if source is not None and source.follows and settings.refresh > 0:
        recommender.follower = live.Follower(recommender, source, settings.refresh, settings.search).start()
    return recommender


def _load_catalogue(settings: Settings) -> tuple[Bundle, CatalogueImages, str, live.Source | None]:
    """(bundle, images, revision, the source to follow or None) of FASHION_CATALOG."""
    if (Path(settings.catalogue).expanduser() / HEAD).is_file():  # a Hub repo's files, mounted: read where they are
        source = live.MountSource(settings.catalogue, settings.cache_dir)
        revision, bundle, images = source.first()
        return bundle, images, revision, source if settings.refresh > 0 else None
    if settings.refresh > 0 and Path(settings.catalogue).expanduser().is_dir():
        source = live.FolderSource(settings.catalogue)
        revision = source.head()
        return (*source.load(revision), revision, source)
    folder = catalogue_folder(settings.catalogue)  # a folder, or a Hub revision fetched or found in the cache
    if folder == Path(settings.catalogue).expanduser():  # a folder, not followed: served in place, as it is
        revision = live.manifest_digest(folder)
        return (*load_catalogue(folder, revision), revision, None)
    return (*load_catalogue(folder, folder.name), folder.name, live.HubSource(settings.catalogue))


def describe_product(match: Match) -> tuple[str, str]:
    """(product name when the catalogue has one, else the file name; its type, colour and gender, or "")."""
    name = str(match.metadata.get(NAME_COLUMN) or "").strip() or PurePosixPath(match.filename).name
    details = " · ".join(str(v).strip() for c in DETAIL_COLUMNS if str(v := match.metadata.get(c) or "").strip())
    return name, details


def caption(match: Match) -> str:
    """Product name, its details (describe_product), then the distance; one line each."""
    return "\n".join(line for line in (*describe_product(match), f"distance {match.distance:.3f}") if line)


def gallery_items(
    matches: list[Match], images: CatalogueImages | None = None, root_url: str = ""
) -> list[tuple[str, str]]:
    """(picture, caption) per match: the picture's file, or its URL on the app's file route below `root_url` when it
    has none (a Hub revision's pictures, read from its shards: fashion_search.image_route)."""
    if images is None:
        return [(str(match.image_path), caption(match)) for match in matches]
    return [(_picture(images, match.row, root_url), caption(match)) for match in matches]


def _picture(images: CatalogueImages, row: int, root_url: str) -> str:
    return root_url + images.route_path(row) if images.served_by_route else str(images.file(row))


def listing(matches: list[Match], revision: str | None = None) -> list[dict]:
    """The JSON the API returns: each match's listing and, when given, the revision it was answered from."""
    return [{**match.listing(), **({"revision": revision} if revision is not None else {})} for match in matches]
