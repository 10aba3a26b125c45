"""What the app serves, without the UI: start-up (model, catalogue, warm-up), batched queries, captions and listings.

Batching: Gradio's own `batch=True` cannot give each request its own error (one bad upload fails every request
of its batch, and Gradio 6's `validator=` does not work for batched functions with more than one input), so each
request is its own Gradio event (decoded, checked and searched on its own) and only the forward pass is shared:
`EmbedBatcher` runs the queries of concurrent requests through the model together.
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

MAX_BATCH_SIZE = 8  # queries per forward pass; the app runs as many requests at once
MAX_UPLOAD = "20mb"  # Gradio refuses bigger uploads before they reach us
NAME_COLUMN = "productDisplayName"
DETAIL_COLUMNS = ("articleType", "baseColour", "gender")  # shown under the name, where the catalogue has them
NO_IMAGE = "Please upload a photo of a product first (or take one with the webcam, or paste one)."


class StartupError(RuntimeError):
    """The app cannot start; the message says why and what to do."""


class QueryError(ValueError):
    """A request that cannot be answered (no picture, not a picture, no product matches); the message is for a person."""


@dataclass(frozen=True)
class CatalogueInfo:
    source: str  # "demo" or the FASHION_CATALOG value
    name: str  # what the page calls it: the Hub repo, or the bundle folder's name (not the server's path)
    count: int
    weights: str  # the embedder fingerprint
    random_weights: bool


class EmbedBatcher:
    """Runs the queries that arrive while the model is busy through it together, in one forward pass.

    Nothing waits for a batch to fill: a lone query goes straight through; queries that arrive during a forward
    pass (up to `max_batch_size`) make up the next one.
    """

    def __init__(self, embed, max_batch_size: int = MAX_BATCH_SIZE):
        self._embed = embed  # (n, 224, 224, 3) float32 -> (n, d) float32
        self._max = max_batch_size
        self._queue: queue.SimpleQueue[tuple[np.ndarray, Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
        self._thread.start()
        self.batch_sizes: list[int] = []  # the size of every forward pass so far (for tests and benchmarks)

    def embed(self, array: np.ndarray) -> np.ndarray:
        """One preprocessed query (224, 224, 3) -> its (d,) vector; blocks until its forward pass is done."""
        future: Future = Future()
        self._queue.put((array, future))
        return future.result()

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self._max:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                vectors = self._embed(np.stack([array for array, _ in items]))
            except BaseException as exc:  # hand the failure to every waiting request; keep serving
                for _, future in items:
                    future.set_exception(exc)
                continue
            self.batch_sizes.append(len(items))
            for (_, future), vector in zip(items, vectors):
                future.set_result(vector)


class Recommender:
    """A loaded catalogue and model, shared by every request; safe to call from many threads at once."""

    def __init__(self, searcher: Searcher, info: CatalogueInfo, max_batch_size: int = MAX_BATCH_SIZE):
        # Pillow registers its file-format plugins on the first Image.open, and that is not thread-safe: two requests
        # decoding at once can see a half-registered plugin (KeyError: 'MPO'). Register them all now, in one thread.
        Image.init()
        self.searcher = searcher
        self.info = info
        self.batcher = EmbedBatcher(searcher.embedder.embed, max_batch_size)
        self.filter_choices = searcher.filter_choices()  # {column: sorted values}, only columns the bundle has

    @property
    def bundle(self) -> Bundle:
        return self.searcher.bundle

    def warm_up(self) -> None:
        """One query end to end (a white picture), so the first visitor does not pay for graph tracing."""
        self.recommend(Image.new("RGB", (IMAGE_SIZE[1], IMAGE_SIZE[0]), "white"))

    def recommend(self, image: ImageSource | None, k: int = 5, filters: dict[str, list[str]] | None = None) -> list[Match]:
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
        vector = self.batcher.embed(array)
        try:
            return self.searcher.matches(vector[None, :], k, filters)[0]
        except (NoMatch, ValueError) as exc:  # no product matches, or a column the catalogue does not have
            raise QueryError(str(exc)) from exc


def load_recommender(settings: Settings, *, warm_up: bool = True) -> Recommender:
    """Load the model and the catalogue once; the demo catalogue is built (or reused from the cache) when none is set.

    Raises:
        StartupError: the weights, the catalogue or the Hub failed; the message says how to fix it.
    """
    from fashion_search.demo import demo_bundle
    from fashion_search.embedder import Embedder, WeightsUnavailable  # TensorFlow loads here, not at import

    try:
        # A given catalogue is checked before the model is built, so a broken one is refused in seconds.
        bundle = None if settings.catalog is None else load_bundle(catalog_to_folder(settings.catalog))
        embedder = Embedder.load(settings.weights)
        if bundle is None:
            bundle = demo_bundle(embedder, settings.cache_dir)
        searcher = Searcher(embedder, bundle)
    except (WeightsUnavailable, BundleError, ConfigError, PrecomputeError, CatalogueError) as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise StartupError(f"Could not read or write {exc.filename or 'a file'}: {exc.strerror or exc}.") from exc
    info = CatalogueInfo(
        source=settings.catalog or "demo",
        name=_catalogue_name(settings.catalog),
        count=len(bundle.filenames),
        weights=embedder.fingerprint,
        random_weights=embedder.fingerprint.startswith("random"),
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

