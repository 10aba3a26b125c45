"""What the app serves, without the UI: start-up (model, catalogue, warm-up), batched queries, captions and listings.

Batching: Gradio's own `batch=True` cannot give each request its own error (one bad upload fails every request
of its batch, and Gradio 6's `validator=` does not work for batched functions with more than one input), so each
request is its own Gradio event (decoded and checked on its own) and the heavy steps are shared by the requests
that arrive together: one `Batcher` runs their queries through the model in one forward pass and hands the vectors
on, together, to a second that searches those sharing k and filters in one scikit-learn call (the same results as
one at a time, bit for bit, at a fraction of the cost per query). Each stage has its own thread, so one batch is
searched while the next is embedded.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from fashion_search.bundle import Bundle, BundleError, load_bundle
from fashion_search.catalogue import CatalogueError
from fashion_search.config import ConfigError, Settings, catalog_to_folder, looks_like_hub_spec
from fashion_search.imaging import IMAGE_SIZE, ImageError, ImageSource, load_input
from fashion_search.pipeline import PrecomputeError
from fashion_search.search import MAX_K, Match, NoMatch, Searcher

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 8  # queries per forward pass and per search; the app runs as many requests at once
MAX_UPLOAD = "20mb"  # Gradio refuses bigger uploads before they reach us
# Gradio keeps a copy of the page's config for each session (each browser tab, each gradio_client Client): about
# 70 KB each here (1,000 sessions on the 44k catalogue: +73 MB), and by default up to 10,000 of them (~700 MB). This
# app keeps no state in a session, so the oldest are dropped sooner; a dropped session is simply made anew.
SESSION_CAPACITY = 1000
NAME_COLUMN = "productDisplayName"
DETAIL_COLUMNS = ("articleType", "baseColour", "gender")  # shown under the name, where the catalogue has them
NO_IMAGE = "Please upload a photo of a product first (or take one with the webcam, or paste one)."


class StartupError(RuntimeError):
    """The app cannot start; the message says why and what to do."""


class QueryError(ValueError):
    """A request that cannot be answered (no picture, not a picture, no product matches); the message is for people."""


@dataclass(frozen=True)
class CatalogueInfo:
    source: str  # "demo" or the FASHION_CATALOG value
    name: str  # what the page calls it: the Hub repo, or the bundle folder's name (not the server's path)
    count: int
    weights: str  # the embedder fingerprint
    random_weights: bool
    precision: str = "float32"  # the model's arithmetic: "float32" (the seed's) or "bfloat16"


class Batcher:
    """Runs the items that arrive while it is busy together, in one call of `run_batch`, in a thread of its own.

    Nothing waits for a batch to fill: a lone item goes straight through; items that arrive during a call (up to
    `max_batch_size`, whole submissions at a time) make up the next one. `run_batch(items)` returns one result per
    item, an exception instance for an item that failed; if it raises, every item of the batch gets that exception.
    Either way it keeps serving.
    """

    def __init__(self, run_batch, max_batch_size: int = MAX_BATCH_SIZE, name: str = "batcher"):
        self._run_batch = run_batch  # list of items -> list of results (or exceptions), one per item
        self._max = max_batch_size
        self._queue: queue.SimpleQueue[list[tuple[object, Future]]] = queue.SimpleQueue()  # one list per submit_all
        self._held: list[tuple[object, Future]] | None = None  # a submission that did not fit in the last batch
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.batch_sizes: list[int] = []  # the size of every call so far (for tests and benchmarks)

    def submit(self, item):
        """Queue one item; block until its batch is done; return its result or raise its exception."""
        return self.submit_all([item])[0].result()

    def submit_all(self, items: list) -> list[Future]:
        """Queue items to be run together (they are never split between calls); do not wait."""
        work = [(item, Future()) for item in items]
        self._queue.put(work)
        return [future for _, future in work]

    def _next_batch(self) -> list[tuple[object, Future]]:
        batch, self._held = self._held or self._queue.get(), None
        while len(batch) < self._max:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if len(batch) + len(more) > self._max:
                self._held = more  # first in the next batch
                break
            batch = batch + more
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
            self.batch_sizes.append(len(batch))
            for (_, future), result in zip(batch, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


@dataclass(frozen=True)
class _Query:
    array: np.ndarray  # (224, 224, 3) float32, preprocessed
    k: int
    filters: tuple  # canonical: ((column, (value, ...)), ...), sorted, empty choices left out


def _query_error(cause: Exception) -> QueryError:
    error = QueryError(str(cause))
    error.__cause__ = cause
    return error


def _canonical(filters: dict[str, list[str]] | None) -> tuple:
    """The same key for the same filters, whatever the order of columns and values (repr: never a TypeError)."""
    return tuple(
        sorted((column, tuple(sorted(values, key=repr))) for column, values in (filters or {}).items() if values)
    )


class Recommender:
    """A loaded catalogue and model, shared by every request; safe to call from many threads at once."""

    def __init__(self, searcher: Searcher, info: CatalogueInfo, max_batch_size: int = MAX_BATCH_SIZE):
        # Pillow registers its file-format plugins on the first Image.open, and that is not thread-safe: two requests
        # decoding at once can see a half-registered plugin (KeyError: 'MPO'). Register them all now, in one thread.
        Image.init()
        self.searcher = searcher
        self.info = info
        self.embedding = Batcher(self._embed_batch, max_batch_size, name="embed-batcher")
        self.searching = Batcher(self._search_batch, max_batch_size, name="search-batcher")
        self.filter_choices = searcher.filter_choices()  # {column: sorted values}, only columns the bundle has

    @property
    def bundle(self) -> Bundle:
        return self.searcher.bundle

    def warm_up(self) -> None:
        """One query end to end (a white picture), so the first visitor does not pay for graph tracing."""
        self.recommend(Image.new("RGB", (IMAGE_SIZE[1], IMAGE_SIZE[0]), "white"))

    def recommend(
        self, image: ImageSource | None, k: int = 5, filters: dict[str, list[str]] | None = None
    ) -> list[Match]:
        """The k most similar products to `image` among those matching `filters`.

        Raises:
            QueryError: no image, an image that cannot be read, k out of range, or no product matching the filters.
        """
        if image is None:
            raise QueryError(NO_IMAGE)
        if not 1 <= k <= MAX_K:
            raise QueryError(f"The number of results must be between 1 and {MAX_K}; got {k}.")
        try:
            array = load_input(image)
        except ImageError as exc:
            raise QueryError(str(exc)) from exc
        return self.embedding.submit(_Query(array, k, _canonical(filters))).result()

    def _embed_batch(self, queries: list[_Query]) -> list[Future]:
        """One forward pass; its vectors go on to the search stage together (its futures are the results)."""
        vectors = self.searcher.embedder.embed(np.stack([query.array for query in queries]))
        return self.searching.submit_all(list(zip(vectors, queries)))

    def _search_batch(self, items: list[tuple[np.ndarray, _Query]]) -> list[list[Match] | QueryError]:
        """One scikit-learn call per (k, filters) among the (vector, query) items; an error stays in its group."""
        groups: dict[tuple, list[int]] = {}
        for position, (_, query) in enumerate(items):
            groups.setdefault((query.k, query.filters), []).append(position)
        results: list = [None] * len(items)
        for (k, filters), positions in groups.items():
            vectors = np.stack([items[p][0] for p in positions])
            try:
                found = self.searcher.matches(vectors, k, {column: list(values) for column, values in filters})
            except (NoMatch, ValueError) as exc:  # no product matches, or a column the catalogue does not have
                found = [_query_error(exc) for _ in positions]  # one each: raising sets its traceback
            for position, matches in zip(positions, found):
                results[position] = matches
        return results


def load_recommender(settings: Settings, *, warm_up: bool = True) -> Recommender:
    """Load the model and the catalogue once; the demo catalogue is built (or reused from the cache) when none is set.

    Raises:
        StartupError: the weights, the catalogue or the Hub failed; the message says how to fix it.
    """
    from fashion_search.demo import demo_bundle
    from fashion_search.embedder import Embedder, PrecisionUnavailable, WeightsUnavailable  # TensorFlow loads here

    try:
        # A given catalogue is checked before the model is built, so a broken one is refused in seconds.
        bundle = None if settings.catalog is None else load_bundle(catalog_to_folder(settings.catalog))
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
        searcher = Searcher(embedder, bundle)
    except (WeightsUnavailable, PrecisionUnavailable, BundleError, ConfigError, PrecomputeError, CatalogueError) as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise StartupError(f"Could not read or write {exc.filename or 'a file'}: {exc.strerror or exc}.") from exc
    info = CatalogueInfo(
        source=settings.catalog or "demo",
        name=_catalogue_name(settings.catalog),
        count=len(bundle.filenames),
        weights=embedder.fingerprint,
        random_weights=embedder.fingerprint.startswith("random"),
        precision=embedder.precision,
    )
    recommender = Recommender(searcher, info)
    if warm_up:
        recommender.warm_up()
    return recommender


def _catalogue_name(catalog: str | None) -> str:
    if catalog is None:
        return "demo"
    return catalog if looks_like_hub_spec(catalog) and not Path(catalog).expanduser().exists() else Path(catalog).name


def caption(match: Match) -> str:
    """Product name when the catalogue has one, else the file name; its type, colour and gender; then the distance."""
    name = str(match.metadata.get(NAME_COLUMN) or "").strip() or PurePosixPath(match.filename).name
    details = " · ".join(str(v).strip() for c in DETAIL_COLUMNS if str(v := match.metadata.get(c) or "").strip())
    return "\n".join(line for line in (name, details, f"distance {match.distance:.3f}") if line)


def gallery_items(matches: list[Match]) -> list[tuple[str, str]]:
    return [(str(match.image_path), caption(match)) for match in matches]


def listing(matches: list[Match]) -> list[dict]:
    return [match.listing() for match in matches]
