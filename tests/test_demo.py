"""The demo catalogue: built from assets once per model into the cache, reused on later starts, rebuilt when damaged."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_catalogue, write_styles

from fashion_search import demo
from fashion_search.bundle import BundleHashMismatch, load_bundle


class CountingEmbedder:
    """The real embedder, counting the images it runs through the model."""

    def __init__(self, embedder, description: dict | None = None):
        self._embedder = embedder
        self._description = description
        self.embedded = 0

    def describe(self) -> dict:
        return self._description or self._embedder.describe()

    def embed(self, batch):
        self.embedded += len(batch)
        return self._embedder.embed(batch)


@pytest.fixture()
def assets(tmp_path) -> Path:
    """An assets/ folder shaped like the committed one: catalogue/images, catalogue/styles.csv, examples/."""
    root = tmp_path / "assets"
    names = make_catalogue(root / "catalogue" / "images", 6, seed=7)
    write_styles(root / "catalogue" / "styles.csv", [Path(n).stem for n in names])
    make_catalogue(root / "examples", 2, seed=8)
    return root


@pytest.mark.slow
def test_first_start_builds_the_demo_bundle_and_later_starts_reuse_it(embedder, assets, tmp_path):
    cache = tmp_path / "cache"
    counting = CountingEmbedder(embedder)
    bundle = demo.demo_bundle(counting, cache, assets)

    assert bundle.root == cache / f"demo-{demo.demo_key(embedder, assets)[:16]}"
    assert bundle.filenames == sorted(p.name for p in (assets / "catalogue" / "images").iterdir())
    assert bundle.metadata[0]["productDisplayName"].startswith("Product 1000")
    assert bundle.weights == embedder.fingerprint
    assert counting.embedded == 6

    again = demo.demo_bundle(counting, cache, assets)
    assert counting.embedded == 6  # nothing embedded the second time
    assert again.root == bundle.root and again.manifest == bundle.manifest


def test_the_cache_key_follows_the_model_and_every_asset_byte(embedder, assets):
    key = demo.demo_key(embedder, assets)
    assert key == demo.demo_key(embedder, assets)
    other_model = CountingEmbedder(embedder, {**embedder.describe(), "weights": "random:0"})
    assert demo.demo_key(other_model, assets) != key

    keys = [key]
    catalogue = assets / "catalogue"
    styles = catalogue / "styles.csv"
    styles.write_text(styles.read_text().replace("Summer", "Winter"))
    keys.append(demo.demo_key(embedder, assets))
    changed = bytearray((catalogue / "images" / "1000.jpg").read_bytes())
    changed[len(changed) // 2] ^= 1  # one bit of one image, its name and size unchanged
    (catalogue / "images" / "1000.jpg").write_bytes(changed)
    keys.append(demo.demo_key(embedder, assets))
    (catalogue / "images" / "1006.jpg").write_bytes((assets / "examples" / "1000.jpg").read_bytes())  # one more
    keys.append(demo.demo_key(embedder, assets))
    (catalogue / "images" / "1002.jpg").unlink()  # one fewer
    keys.append(demo.demo_key(embedder, assets))
    assert len(set(keys)) == len(keys), keys  # each change gave a key of its own


def test_a_damaged_cached_bundle_is_rebuilt(embedder, assets, tmp_path):
    cache = tmp_path / "cache"
    bundle = demo.demo_bundle(embedder, cache, assets)
    (bundle.images_dir / bundle.filenames[0]).write_bytes(b"damaged")
    with pytest.raises(BundleHashMismatch):
        load_bundle(bundle.root)

    rebuilt = demo.demo_bundle(embedder, cache, assets)
    assert rebuilt.root == bundle.root
    assert load_bundle(rebuilt.root).filenames == bundle.filenames  # every hash verified again
    assert (rebuilt.images_dir / bundle.filenames[0]).read_bytes() == (
        assets / "catalogue" / "images" / bundle.filenames[0]
    ).read_bytes()


def test_the_committed_examples_are_query_pictures_outside_the_catalogue():
    examples = demo.example_images()
    assert len(examples) == 10
    catalogue_bytes = {p.read_bytes() for p in (demo.ASSETS / "catalogue" / "images").iterdir()}
    assert all(path.read_bytes() not in catalogue_bytes for path in examples)
