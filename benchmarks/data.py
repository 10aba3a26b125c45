"""Generated inputs for the benchmarks: product-like JPEGs, a seeded random ResNet50 weights file, big bundles.

Speed does not depend on the weights' values or on what the pictures show, so everything here is generated; the
expensive pieces (the weights file, the 44k-row bundle) are kept in the cache folder and reused across runs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from big_catalogue import unit_vectors  # (n, dim) float32 unit rows; tests/ is on the path (benchmarks/__init__.py)
from PIL import Image, ImageDraw

CACHE = Path(os.environ.get("FASHION_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
WEIGHTS_SEED = 1234
DIM = 2048
_BUNDLE_VERSION = "v1"  # bump when the generated big bundle changes shape

# Kaggle styles.csv-like columns with realistic numbers of distinct values (the app builds a filter from each).
_GENDERS = ["Men", "Women", "Boys", "Girls", "Unisex"]
_MASTERS = ["Apparel", "Accessories", "Footwear", "Personal Care", "Free Items", "Sporting Goods", "Home"]
_ARTICLES = [f"Article {i}" for i in range(143)]
_COLOURS = [f"Colour {i}" for i in range(46)]


def draw_product(rng: np.random.Generator, size: tuple[int, int] = (60, 80)) -> Image.Image:
    """A product-like picture: a few coloured shapes on a light background (as tests/conftest.py draws them)."""
    width, height = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        x1, y1 = int(rng.integers(x0 + 5, width + 1)), int(rng.integers(y0 + 5, height + 1))
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_catalogue(folder: Path, count: int, *, large_every: int = 20, seed: int = 0) -> list[Path]:
    """`count` JPEGs `<id>.jpg` like Kaggle's small set (60x80), every `large_every`-th one 1080x1440 instead."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        size = (1080, 1440) if large_every and i % large_every == large_every - 1 else (60, 80)
        path = folder / f"{10000 + i}.jpg"
        draw_product(rng, size).save(path, quality=90)
        paths.append(path)
    return paths


def query_images(count: int, seed: int = 99) -> list[bytes]:
    """Upload-like query files: JPEGs of a few sizes, as bytes."""
    rng = np.random.default_rng(seed)
    sizes = [(60, 80), (300, 400), (640, 480), (1080, 1440)]
    return [jpeg_bytes(draw_product(rng, sizes[i % len(sizes)])) for i in range(count)]


def weights_file() -> Path:
    """A seeded random ResNet50 (no top) in the legacy Keras .h5 layout Keras ships the ImageNet weights in."""
    path = CACHE / f"resnet50_random{WEIGHTS_SEED}_notop.h5"
    if path.is_file():
        return path
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras.utils.set_random_seed(WEIGHTS_SEED)
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as handle:
        save_weights_to_hdf5_group(handle, model)
    os.replace(tmp, path)
    return path


def model_description(weights: Path) -> dict:
    """What `Embedder.load(weights).describe()` gives, without building the model."""
    from fashion_search.embedder import MODEL_DESCRIPTION
    from fashion_search.files import sha256_file

    return {**MODEL_DESCRIPTION, "weights": f"sha256:{sha256_file(weights)}"}


def big_bundle(rows: int, weights: Path, *, log=print) -> Path:
    """A cached bundle of `rows` synthetic unit vectors, `rows` tiny JPEGs and Kaggle-like metadata.

    It is a real bundle (written by `write_bundle`, so `load_bundle` verifies it like any other), made for the
    weights file `weights` so the app accepts it; only the vectors are random instead of computed.
    """
    from fashion_search.bundle import write_bundle
    from fashion_search.imaging import PREPROCESSING_ID

    root = CACHE / f"bundle-{rows}-{_BUNDLE_VERSION}"
    if (root / "manifest.json").is_file():
        return root
    log(f"  generating a {rows:,}-row bundle in {root} (once; cached) ...")
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    images = staging / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)
    filenames, metadata = [], []
    for i in range(rows):
        name = f"{10000 + i}.jpg"
        draw_product(rng).save(images / name, quality=90)
        filenames.append(name)
        metadata.append(_styles_row(10000 + i, rng))
    write_bundle(
        staging,
        embeddings=unit_vectors(rows, seed=2),
        filenames=filenames,
        metadata=metadata,
        model=model_description(weights),
        preprocessing=PREPROCESSING_ID,
    )
    shutil.rmtree(root, ignore_errors=True)
    os.replace(staging, root)
    return root


def bfloat16_twin(bundle: Path) -> Path:
    """`bundle` with its manifest saying bfloat16, so app.py runs the model in bfloat16 (images hard-linked, cached).

    The vectors are the same synthetic ones: only the model's speed is measured on it, as on `bundle`.
    """
    twin = bundle.with_name(bundle.name + "-bf16")
    if (twin / "manifest.json").is_file():
        return twin
    staging = twin.with_name(twin.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle, staging, copy_function=os.link)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model"]["precision"] = "bfloat16"
    (staging / "manifest.json").unlink()  # a hard link to the original's: write a file of its own
    (staging / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(twin, ignore_errors=True)
    os.replace(staging, twin)
    return twin


def _styles_row(ident: int, rng: np.random.Generator) -> dict:
    article = _ARTICLES[int(rng.integers(len(_ARTICLES)))]
    colour = _COLOURS[int(rng.integers(len(_COLOURS)))]
    return {
        "id": str(ident),
        "gender": _GENDERS[int(rng.integers(len(_GENDERS)))],
        "masterCategory": _MASTERS[int(rng.integers(len(_MASTERS)))],
        "subCategory": "Sub",
        "articleType": article,
        "baseColour": colour,
        "season": "Summer",
        "year": "2012",
        "usage": "Casual",
        "productDisplayName": f"Product {ident} {colour} {article}",
    }


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1))
