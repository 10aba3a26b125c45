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
