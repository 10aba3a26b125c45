"""A catalogue at Kaggle's size made without the model: synthetic unit vectors, tiny JPEGs, Kaggle-like metadata.

The bundle is real (written by `write_bundle`, so `load_bundle` verifies it like any other); only its vectors are
random instead of computed. Used by the Hub tests at the real size and by the benchmarks.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

KAGGLE_ROWS = 44_000  # fashion-product-images-small
FIRST_ID = 10_000
_TYPES = ["Tshirts", "Shirts", "Casual Shoes", "Watches", "Sports Shoes", "Kurtas", "Tops", "Handbags", "Heels"]


def tiny_jpeg(ident: int) -> bytes:
    """A 6x8 JPEG whose colour depends on `ident` (a few hundred bytes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (6, 8), (ident % 251, ident // 251 % 251, 90)).save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


def unit_vectors(n: int, dim: int = 2048, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit rows, made in blocks so large n never needs a float64 copy."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        block = rng.standard_normal((min(8192, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def styles_row(ident: int) -> dict:
    kind = _TYPES[ident % len(_TYPES)]
    return {
        "id": str(ident),
        "gender": ["Men", "Women"][ident % 2],
        "articleType": kind,
        "productDisplayName": f"Product {ident} {kind}",
    }


def write_catalogue_bundle(root: Path, ids: range, *, model: dict, preprocessing: str, dim: int) -> Path:
    """A bundle of products `<id>.jpg` for `ids` in `root` (images no longer in `ids` are removed)."""
    from fashion_search.bundle import write_bundle

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"{ident}.jpg" for ident in ids]
    for stale in set(p.name for p in images.iterdir()) - set(names):
        (images / stale).unlink()
    for ident, name in zip(ids, names):
        if not (images / name).exists():
            (images / name).write_bytes(tiny_jpeg(ident))
    write_bundle(
        root,
        embeddings=unit_vectors(len(names), dim, seed=len(names)),
        filenames=names,
        metadata=[styles_row(ident) for ident in ids],
        model=model,
        preprocessing=preprocessing,
    )
    return root


def grown_copy(catalogue: Path, target: Path, *, extra: int = 0, keep: int | None = None) -> Path:
    """A bundle of the catalogue's first `keep` products as they are (images hard-linked) plus `extra` new ones."""
    from fashion_search.bundle import load_bundle, write_bundle

    bundle = load_bundle(catalogue, verify_images=False)
    names, rows = bundle.filenames[:keep], list(bundle.metadata)[:keep]
    (target / "images").mkdir(parents=True)
    for name in names:
        os.link(catalogue / "images" / name, target / "images" / name)
    first = max(int(Path(name).stem) for name in names) + 1
    for ident in range(first, first + extra):
        (target / "images" / f"{ident}.jpg").write_bytes(tiny_jpeg(ident))
        names.append(f"{ident}.jpg")
        rows.append(styles_row(ident))
    vectors = np.concatenate([bundle.embeddings[: len(names) - extra], unit_vectors(extra, bundle.manifest["dim"])])
    write_bundle(
        target,
        embeddings=vectors,
        filenames=names,
        metadata=rows,
        model=bundle.manifest["model"],
        preprocessing=bundle.manifest["preprocessing"],
    )
    return target


# Vectors with neighbourhoods like real embeddings', at any size (the approximate index's recall means nothing on
# uniform random vectors, which have none): the benchmarks grow them from real Fashion-MNIST embeddings
# (benchmarks/real_vectors.py), the tests from `structured_base`.
GROW_NEIGHBOURS = 10  # a grown row lies between a base vector and one of its 10 nearest base vectors
GROW_NOISE = 0.002  # per dimension


def structured_base(n: int, dim: int = 2048, rank: int = 32, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit rows like a CNN's pooled features: non-negative, around a common direction, varying on a
    low-dimensional manifold (ReLU of a random rank-`rank` map of gaussian codes). With these defaults a held-out
    row's 20th nearest grown row is at 0.71 of a random row's distance; real embeddings (benchmarks/real_vectors.py,
    Fashion-MNIST through the benchmarks' seeded ResNet50) give 0.75."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(12345)  # the same manifold for every seed
    centre = np.abs(fixed.standard_normal(dim, dtype=np.float32))
    basis = fixed.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(rank)
    vectors = np.maximum(centre + spread * (rng.standard_normal((n, rank), dtype=np.float32) @ basis), 0)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def grown_vectors(base: np.ndarray, n: int, seed: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """(n, d) float32 unit rows grown from `base` (see the module's docstring); written into `out` when given."""
    rng = np.random.default_rng(seed)
    similarity = base @ base.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :GROW_NEIGHBOURS]
    out = np.empty((n, base.shape[1]), dtype=np.float32) if out is None else out
    for start in range(0, n, 16384):
        m = min(16384, n - start)
        rows = rng.integers(0, len(base), m)
        partners = nearest[rows, rng.integers(0, GROW_NEIGHBOURS, m)]
        t = rng.random((m, 1), dtype=np.float32)
        block = (1 - t) * base[rows] + t * base[partners]
        block += rng.standard_normal(block.shape, dtype=np.float32) * GROW_NOISE
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def near_copies(products: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """(n, d) float32 unit rows, each a copy of one of `products` (chosen at random) with `noise` per dimension: flat
    neighbourhoods, like a catalogue of many shots of few products. A query made the same way finds its nearest among
    thousands of rows nearly as near, told apart by the noise, which the index's reduced vectors mostly leave out."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, products.shape[1]), dtype=np.float32)
    for start in range(0, n, 16384):
        m = min(16384, n - start)
        block = (
            products[rng.integers(0, len(products), m)]
            + rng.standard_normal((m, products.shape[1]), np.float32) * noise
        )
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def describe_neighbourhoods(vectors: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray, seed: int = 0) -> dict:
    """Median distance of a query to its exact 1st and k-th neighbour, and to a random row: real data has a gap."""
    rng = np.random.default_rng(seed)
    first = np.linalg.norm(vectors[exact_rows[:, 0]] - queries, axis=1)
    last = np.linalg.norm(vectors[exact_rows[:, -1]] - queries, axis=1)
    random_rows = np.linalg.norm(vectors[np.sort(rng.integers(0, len(vectors), len(queries)))] - queries, axis=1)
    return {
        "nearest": float(np.median(first)),
        f"{exact_rows.shape[1]}th": float(np.median(last)),
        "random row": float(np.median(random_rows)),
    }
