"""The app's non-UI half: the batchers (forward pass, search), per-request errors, captions, listings, start-up."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import embed_files
from PIL import Image

from fashion_search import approximate, webapp
from fashion_search.bundle import load_bundle
from fashion_search.config import Settings
from fashion_search.search import Match


class BlockingModel:
    """A stand-in forward pass that holds its first call until released, so requests pile up behind it."""

    def __init__(self, fail_on_call: int | None = None):
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        self.started.set()
        self.release.wait()
        if self.calls == self.fail_on_call:
            raise RuntimeError("the forward pass failed")
        return [array[0, 0, :] * 2 for array in batch]  # each query's own answer: its first pixel, doubled


def query(value: float) -> np.ndarray:
    return np.full((4, 4, 3), value, dtype=np.float32)


def run_in_threads(batcher: webapp.Batcher, values: list[float], results: dict) -> list[threading.Thread]:
    def worker(value):
        try:
            results[value] = batcher.submit(query(value))
        except Exception as exc:  # the test looks at what each request got
            results[value] = exc

    threads = [threading.Thread(target=worker, args=(v,)) for v in values]
    for thread in threads:
        thread.start()
    return threads


def wait_until(condition, timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def pile_up(max_batch_size: int, first: float, waiting: list[float]) -> tuple[webapp.Batcher, BlockingModel, dict]:
    """One query holds the model; `waiting` queue up behind it; then the model is released and every query answered."""
    model = BlockingModel()
    batcher = webapp.Batcher(model, max_batch_size=max_batch_size)
    results: dict = {}
    threads = run_in_threads(batcher, [first], results)
    model.started.wait(30)
    threads += run_in_threads(batcher, waiting, results)
    wait_until(lambda: batcher._queue.qsize() == len(waiting))
    model.release.set()
    for thread in threads:
        thread.join(30)
    return batcher, model, results


def test_queries_arriving_during_a_forward_pass_share_the_next_one():
    batcher, model, results = pile_up(8, 1.0, [2.0, 3.0, 4.0, 5.0, 6.0])

    assert batcher.batch_sizes == {1: 1, 5: 1}
    assert model.calls == 2
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        np.testing.assert_array_equal(results[value], np.full(3, 2 * value, dtype=np.float32))


def test_a_batch_never_exceeds_the_maximum_size():
    batcher, _, results = pile_up(4, 0.5, [float(v) for v in range(1, 11)])
    assert batcher.batch_sizes == {1: 1, 4: 2, 2: 1}
    assert all(np.array_equal(results[v], np.full(3, 2 * v, np.float32)) for v in results)


def test_a_failed_forward_pass_reaches_its_requests_and_the_batcher_keeps_serving():
    model = BlockingModel(fail_on_call=1)
    batcher = webapp.Batcher(model)
    model.release.set()
    with pytest.raises(RuntimeError, match="the forward pass failed"):
        batcher.submit(query(1.0))
    np.testing.assert_array_equal(batcher.submit(query(3.0)), np.full(3, 6.0, np.float32))


def test_a_batch_function_that_loses_a_result_fails_its_batch_instead_of_hanging_it():
    def double_but_drop_the_last_of_several(items):
        doubled = [item * 2 for item in items]
        return doubled[:-1] if len(items) > 1 else doubled

    model = BlockingModel()
    batcher = webapp.Batcher(lambda items: double_but_drop_the_last_of_several(model(items)))
    results: dict = {}
    threads = run_in_threads(batcher, [1.0], results)
    model.started.wait(30)
    threads += run_in_threads(batcher, [2.0, 3.0], results)
    wait_until(lambda: batcher._queue.qsize() == 2)
    model.release.set()
    for thread in threads:
        thread.join(30)
    assert isinstance(results[2.0], RuntimeError) and str(results[2.0]) == "1 results for a batch of 2"
    assert isinstance(results[3.0], RuntimeError)
    np.testing.assert_array_equal(results[1.0], np.full(3, 4.0, np.float32))
    np.testing.assert_array_equal(batcher.submit(query(4.0)), np.full(3, 16.0, np.float32))


def test_an_item_that_fails_alone_fails_alone():
    def halve(items):
        return [ValueError(f"odd {item}") if item % 2 else item // 2 for item in items]

    batcher = webapp.Batcher(halve)
    assert batcher.submit(8) == 4
    with pytest.raises(ValueError, match="odd 3"):
        batcher.submit(3)
    assert batcher.submit(6) == 3


def test_recommend_agrees_with_the_search_core(recommender, embedder, catalogue):
    query_path = catalogue / "images" / "1005.jpg"
    got = recommender.recommend(str(query_path), k=7, filters={"gender": ["Women"]})
    want = recommender.searcher.matches(embed_files(embedder, [query_path]), 7, {"gender": ["Women"]})[0]
    assert [m.filename for m in got] == [m.filename for m in want]
    assert [m.distance for m in got] == pytest.approx([m.distance for m in want], abs=1e-5)


def test_a_region_of_the_photo_is_searched_as_the_cropped_file_would_be(recommender, catalogue, tmp_path):
    """A product in a corner of a bigger picture: its box finds what the product's own file finds."""
    product = Image.open(catalogue / "images" / "1005.jpg").convert("RGB")
    scene = Image.new("RGB", (product.width * 3, product.height * 2), (40, 90, 160))
    scene.paste(product, (product.width * 2, product.height))
    scene_path = tmp_path / "scene.png"
    scene.save(scene_path)
    box = (product.width * 2, product.height, product.width * 3, product.height * 2)
    cropped_path = tmp_path / "cropped.png"
    scene.crop(box).save(cropped_path)

    got = recommender.recommend(str(scene_path), 5, region=", ".join(map(str, box)))
    want = recommender.recommend(str(cropped_path), 5)
    assert [(m.filename, m.distance) for m in got] == [(m.filename, m.distance) for m in want]
    assert got[0].filename == "1005.jpg"
    assert recommender.recommend(str(scene_path), 5, region=list(box)) == got
    whole = recommender.recommend(str(scene_path), 5, region="")
    assert whole == recommender.recommend(str(scene_path), 5)
    assert [m.filename for m in whole] != [m.filename for m in got]


def test_filters_in_any_order_are_one_search_group():
    assert webapp._canonical({"gender": ["Women", "Men"], "baseColour": ["Red"], "articleType": []}) == (
        webapp._canonical({"baseColour": ["Red"], "gender": ["Men", "Women"]})
    )
    assert webapp._canonical({"gender": [None, "Men"]}) == (("gender", ("Men", None)),)  # mixed kinds: no TypeError


def test_searches_made_together_equal_searches_made_one_at_a_time(recommender, embedder):
    """The search stage groups by k and filters; each request gets exactly what its own search would give."""
    searcher = recommender.searcher
    vectors = embed_files(embedder, [searcher.bundle.image_path(row) for row in range(6)])
    requests = [
        (vectors[0], 5, None),
        (vectors[1], 5, {"gender": ["Women"]}),
        (vectors[2], 5, None),
        (vectors[3], 3, None),
        (vectors[4], 5, {"gender": ["Women"], "baseColour": []}),  # an empty choice is no filter on that column
        (vectors[5], 5, {"masterCategory": ["Footwear"], "articleType": ["Watches"]}),  # nothing matches
    ]
    got = recommender._search_batch(
        [webapp._Query(recommender.snapshot, vector, k, webapp._canonical(f)) for vector, k, f in requests]
    )

    for (vector, k, filters), result in zip(requests[:5], got[:5]):
        want = searcher.matches(vector[None, :], k, filters)[0]
        assert [m.row for m in result] == [m.row for m in want]
        # Same rows; distances to float32 rounding (on a CPU without AVX-512 a block of queries rounds differently).
        assert [m.distance for m in result] == pytest.approx([m.distance for m in want], abs=1e-6)
    assert isinstance(got[5], webapp.QueryError)
    assert "No product in the catalogue matches" in str(got[5])


@pytest.mark.parametrize(
    ("image", "k", "filters", "message"),
    [
        (None, 5, None, webapp.NO_IMAGE),
        (b"not a picture", 5, None, "This file is not an image that can be read"),
        ("IMAGE", 0, None, "between 1 and 20"),
        (
            "IMAGE",
            5,
            {"masterCategory": ["Footwear"], "articleType": ["Watches"]},
            "No product in the catalogue matches",
        ),
        ("IMAGE", 5, {"season": ["Summer"]}, "Cannot filter on ['season']"),
        ("IMAGE", 5, {"region": "1, 2, 3"}, "The region must be four numbers: left, top, right, bottom"),
        ("IMAGE", 5, {"region": "5, 5, 5, 9"}, "is empty: right must be greater than left"),
        ("IMAGE", 5, {"region": "0, 0, 9999, 10"}, "is outside the picture, which is 60x80 pixels"),
    ],
)
def test_requests_that_cannot_be_answered_raise_query_error(recommender, catalogue, image, k, filters, message):
    image = str(catalogue / "images" / "1000.jpg") if image == "IMAGE" else image
    region = (filters or {}).pop("region", None)
    with pytest.raises(webapp.QueryError) as caught:
        recommender.recommend(image, k, filters, region=region)
    assert message in str(caught.value)


def match(filename: str, distance: float, metadata: dict) -> Match:
    return Match(1, 0, filename, distance, Path("/bundle/images") / filename, metadata)


def test_captions_name_the_product_or_else_the_file_and_give_the_distance():
    named = match("shirts/42.jpg", 0.12345, {"productDisplayName": "Blue Oxford Shirt", "gender": "Men"})
    unnamed = match("shirts/43.jpg", 1.5, {})
    blank = match("44.png", 0.5, {"productDisplayName": "  "})
    assert webapp.caption(named) == "Blue Oxford Shirt\nMen\ndistance 0.123"
    detailed = match("45.jpg", 0.25, {"productDisplayName": "Red Dress", "articleType": "Dresses", "baseColour": "Red"})
    assert webapp.caption(detailed) == "Red Dress\nDresses · Red\ndistance 0.250"
    assert webapp.caption(unnamed) == "43.jpg\ndistance 1.500"
    assert webapp.caption(blank) == "44.png\ndistance 0.500"
    assert webapp.gallery_items([named]) == [("/bundle/images/shirts/42.jpg", "Blue Oxford Shirt\nMen\ndistance 0.123")]
    assert webapp.listing([named]) == [
        {
            "rank": 1,
            "filename": "shirts/42.jpg",
            "distance": 0.12345,
            "productDisplayName": "Blue Oxford Shirt",
            "gender": "Men",
        }
    ]


def test_startup_errors_carry_the_fix(bundle_dir, weights_file, tmp_path):
    nowhere = str(tmp_path / "no" / "such" / "bundle")
    with pytest.raises(webapp.StartupError) as caught:
        webapp.load_recommender(Settings(nowhere, str(weights_file), tmp_path))
    assert str(caught.value) == (
        f"FASHION_CATALOG={nowhere!r}: there is no folder there, and it is not a Hub dataset reference "
        "(OWNER/NAME or OWNER/NAME@REVISION). Build a bundle with precompute.py and pass its folder."
    )
    made_with = load_bundle(bundle_dir).manifest["model"]["weights"]
    with pytest.raises(webapp.StartupError) as caught:
        webapp.load_recommender(Settings(str(bundle_dir), "random", tmp_path))
    assert str(caught.value) == (
        f"The catalogue at {bundle_dir} was made with weights {made_with!r}, but the app runs 'random:0'. Rebuild it "
        "with precompute.py and the same --weights, or start the app with the weights the catalogue was made with."
    )


INDEXED_ROWS, INDEXED_LISTS = 4000, 1000  # far more lists than a search probes: it scans only part of the rows
INDEXED_DIMS = 64  # reduced dimensions: the index trains in seconds, and what is tested is which search answers


@dataclass(frozen=True)
class IndexedCatalogue:
    root: Path
    # For products whose 5 most similar others differ between the two searches: each search's answer, as
    # [(filename, distance), ...]: the index's own (approximate.ApproximateIndex) and the reference design's (brute).
    by_index: dict[str, list[tuple[str, float]]]
    by_reference: dict[str, list[tuple[str, float]]]


@pytest.fixture(scope="module")
def indexed_catalogue(tmp_path_factory, bundle_dir) -> IndexedCatalogue:
    """A bundle for the test model of INDEXED_ROWS products (synthetic vectors, tiny JPEGs) with an approximate index
    of INDEXED_LISTS lists, so that a search through it scans only part of the catalogue and misses some neighbours."""
    from big_catalogue import write_catalogue_bundle
    from conftest import similar_reference

    from fashion_search import approximate
    from fashion_search.bundle import write_bundle

    made_with = load_bundle(bundle_dir).manifest
    root = tmp_path_factory.mktemp("indexed") / "catalogue"
    ids = range(10_000, 10_000 + INDEXED_ROWS)
    write_catalogue_bundle(
        root, ids, model=made_with["model"], preprocessing=made_with["preprocessing"], dim=made_with["dim"]
    )
    bundle = load_bundle(root, verify_images=False)  # the app's load checks them
    embeddings = np.array(bundle.embeddings)  # a copy: the bundle's own is mapped from the file rewritten below
    write_bundle(
        root,
        embeddings=embeddings,
        filenames=bundle.filenames,
        sources=bundle.sources,
        metadata=bundle.metadata,
        model=made_with["model"],
        preprocessing=made_with["preprocessing"],
        index_files=approximate.write(root, approximate.train(embeddings, lists=INDEXED_LISTS, dims=INDEXED_DIMS)),
    )
    bundle = load_bundle(root, verify_images=False)
    index = approximate.load(root, bundle.embeddings)
    by_index, by_reference = {}, {}
    for row, name in enumerate(bundle.filenames[:40]):
        found = [n for n in index.search(bundle.embeddings[row], k=6)[0] if n.row != row][:5]
        by_index[name] = [(bundle.filenames[n.row], n.distance) for n in found]
        by_reference[name] = list(zip(*similar_reference(bundle, name, 5)))
    apart = [name for name in by_index if names(by_index[name]) != names(by_reference[name])]
    assert len(apart) >= 10, "the index scans too much of the catalogue to be told apart from the exact search"
    return IndexedCatalogue(
        root, {name: by_index[name] for name in apart}, {name: by_reference[name] for name in apart}
    )


def names(found: list[tuple[str, float]]) -> list[str]:
    return [filename for filename, _ in found]


def assert_answers(recommender: webapp.Recommender, expected: dict[str, list[tuple[str, float]]]) -> None:
    """The app's /similar answer for each product: `expected`'s products in its order, its distances to 1e-6."""
    for name, found in expected.items():
        _, similar = recommender.similar(name, 5)
        assert [m.filename for m in similar] == names(found), name
        assert [m.distance for m in similar] == pytest.approx([distance for _, distance in found], abs=1e-6)


def test_a_catalogue_with_an_approximate_index_is_searched_with_it_unless_told_exact(
    indexed_catalogue, weights_file, tmp_path
):
    """Settings.search through load_recommender: "auto" answers with the index's own neighbours, "exact" with the
    reference design's, on products for which the two differ; filters hold with either."""
    for search, expected in (("auto", indexed_catalogue.by_index), ("exact", indexed_catalogue.by_reference)):
        settings = Settings(str(indexed_catalogue.root), str(weights_file), tmp_path, search=search)
        recommender = webapp.load_recommender(settings, warm_up=False)
        assert_answers(recommender, expected)
        product, similar = recommender.similar(next(iter(expected)), 3, {"gender": ["Women"]})
        assert len(similar) == 3
        assert all(m.metadata["gender"] == "Women" and m.filename != product.filename for m in similar)


@pytest.mark.parametrize("search", ["exact", None])
def test_fashion_search_in_the_environment_chooses_the_search_the_app_makes(
    indexed_catalogue, weights_file, tmp_path, search, caplog
):
    """As app.py starts: the settings resolved from the environment, then load_recommender. Unset: the index."""
    from fashion_search import config

    env = {"FASHION_CATALOG": str(indexed_catalogue.root), "FASHION_WEIGHTS": str(weights_file)}
    env |= {"FASHION_CACHE": str(tmp_path), "FASHION_REFRESH": "0"}  # 0: no follower left looking at the folder
    env |= {"FASHION_SEARCH": search} if search else {}
    with caplog.at_level(logging.INFO, logger="fashion_search.webapp"):
        recommender = webapp.load_recommender(config.resolve([], env), warm_up=False)
    assert_answers(recommender, indexed_catalogue.by_reference if search else indexed_catalogue.by_index)
    # The start says, in one line, how the index is searched and how well it did when it was built.
    said = [record.getMessage() for record in caplog.records if "searched with an approximate" in record.getMessage()]
    index = recommender.searcher.index
    name = indexed_catalogue.root.name
    assert said == ([] if search else [f"Catalogue {name} is searched with an {approximate.describe(index)}."])
