"""Shared fixtures: generated catalogues, a seeded random ResNet50 saved as a Keras .h5 file, a built bundle."""

from __future__ import annotations

import os

# No telemetry from anything the tests run; subprocesses inherit these.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The loopback Hub stand-in speaks LFS, not Xet: huggingface_hub then sends the files the Hub marks "lfs" over LFS.
os.environ["HF_HUB_DISABLE_XET"] = "1"

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fashion_search.bundle import write_bundle

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def needs(available: bool, what: str) -> pytest.MarkDecorator:
    """Skip, saying why, on a machine without `what`; under CI (CI set) run anyway, so that CI runs every test."""
    return pytest.mark.skipif(not available and not os.environ.get("CI"), reason=f"needs {what}")


NEEDS_CHROMIUM = needs(CHROMIUM.exists(), "Debian's chromium (apt-get install chromium)")
NEEDS_FASHION_MNIST = needs(
    FASHION_MNIST.is_dir(), "Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
)
NEEDS_ROOT = needs(os.geteuid() == 0, "root (it mounts file systems and sets chattr +i)")
WEIGHTS_SEED = 1234
STANDIN_TOKEN = "hf_standin_token"  # the `hub` fixture's write token


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The loopback Hub stand-in (tests/hub_standin.py), HF_TOKEN set to its write token as a login would."""
    from hub_standin import HubStandIn

    monkeypatch.setenv("HF_TOKEN", STANDIN_TOKEN)  # read by huggingface_hub on every request
    with HubStandIn(tmp_path / "hub-store", token=STANDIN_TOKEN) as standin:
        yield standin


def draw_product(rng: np.random.Generator, size: tuple[int, int] = (60, 80)) -> Image.Image:
    """A product-like picture: a few coloured shapes on a light background, different for every draw."""
    width, height = size
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        x1, y1 = int(rng.integers(x0 + 5, width + 1)), int(rng.integers(y0 + 5, height + 1))
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    return img


def make_catalogue(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` generated product images as Kaggle-style `<id>.jpg` (and every fourth a PNG) under `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{1000 + i}.png" if i % 4 == 3 else f"{1000 + i}.jpg"
        draw_product(rng).save(folder / name)
        names.append(name)
    return sorted(names)


def write_styles(path: Path, ids: list[str]) -> Path:
    """A styles.csv in Kaggle's layout, one row per id, with an unquoted comma in a product name as Kaggle has."""
    genders, colours, types = ["Men", "Women"], ["Blue", "Red", "Black"], ["Tshirts", "Watches", "Casual Shoes"]
    lines = ["id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"]
    for i, ident in enumerate(ids):
        kind = types[i % 3]
        master = {"Tshirts": "Apparel", "Watches": "Accessories", "Casual Shoes": "Footwear"}[kind]
        name = f"Product {ident}, {colours[i % 3]} {kind}" if i % 5 == 0 else f"Product {ident} {kind}"
        lines.append(f"{ident},{genders[i % 2]},{master},Sub,{kind},{colours[i % 3]},Summer,2012,Casual,{name}")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_bundle(root: Path, images: dict[str, bytes], metadata: bool = True) -> Path:
    """A bundle (8-d synthetic unit vectors) of `images`, nested names too; images no longer named are removed."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for old in [p for p in (root / "images").rglob("*") if p.is_file()]:
        if old.relative_to(root / "images").as_posix() not in images:
            old.unlink()
    for name, content in images.items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).write_bytes(content)
    rows = np.random.default_rng(len(images)).standard_normal((len(images), 8)).astype(np.float32)
    names = sorted(images)
    (root / "metadata.jsonl").unlink(missing_ok=True)
    write_bundle(
        root,
        embeddings=rows / np.linalg.norm(rows, axis=1, keepdims=True),
        filenames=names,
        model={"name": "test", "weights": "random:0"},
        preprocessing="test",
        metadata=[{"id": Path(name).stem} for name in names] if metadata else None,
    )
    return root


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """A seeded random ResNet50 (no top), saved in the legacy Keras .h5 layout Keras ships ImageNet weights in."""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras.utils.set_random_seed(WEIGHTS_SEED)
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    path = tmp_path_factory.mktemp("weights") / "resnet50_random_notop.h5"
    with h5py.File(path, "w") as handle:
        save_weights_to_hdf5_group(handle, model)
    return path


@pytest.fixture(scope="session")
def embedder(weights_file):
    from fashion_search.embedder import Embedder

    return Embedder.load(weights_file)


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> Path:
    """A generated catalogue folder: 20 images and a styles.csv beside it."""
    root = tmp_path_factory.mktemp("catalogue")
    names = make_catalogue(root / "images", 20)
    write_styles(root / "styles.csv", [Path(n).stem for n in names])
    return root


def embed_files(embedder, paths) -> np.ndarray:
    """(n, 2048) unit vectors of image files, decoded as the app decodes an upload."""
    from fashion_search.imaging import load_input

    return embedder.embed(np.stack([load_input(path) for path in paths]))


def reference_top_k(embedder, bundle, path, k: int = 5) -> tuple[list[str], list[float]]:
    """The reference design's answer for an image file: (filenames, distances), nearest first."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(bundle.embeddings)
    distances, rows = index.kneighbors(embed_files(embedder, [path]))
    return [bundle.filenames[row] for row in rows[0]], distances[0].tolist()


def similar_reference(bundle, filename: str, k: int, rows=None) -> tuple[list[str], list[float]]:
    """Brute force over the bundle's vectors: the k nearest other products (among `rows`), nearest first."""
    product = bundle.filenames.index(filename)
    eligible = [row for row in (range(len(bundle.filenames)) if rows is None else rows) if row != product]
    distances = np.linalg.norm(bundle.embeddings[eligible] - bundle.embeddings[product], axis=1)
    order = np.argsort(distances, kind="stable")[:k]
    return [bundle.filenames[eligible[i]] for i in order], distances[order].tolist()


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, catalogue, embedder) -> Path:
    from fashion_search.pipeline import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "catalogue"
    build_bundle(catalogue / "images", out, embedder, metadata=catalogue / "styles.csv", batch_size=8, quiet=True)
    return out


@pytest.fixture(scope="session")
def recommender(embedder, bundle_dir):
    """The app's query path (batched forward pass and search), in this process, over `bundle_dir`."""
    from fashion_search import webapp
    from fashion_search.bundle import load_bundle
    from fashion_search.search import Searcher

    return webapp.Recommender(Searcher(embedder, load_bundle(bundle_dir)))


def pytest_collection_modifyitems(items):
    """A test that needs the ResNet50 (directly or through a bundle made with it) is slow: building it takes seconds."""
    for item in items:
        if "embedder" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
