"""Catalogue vectors with neighbourhoods like real ones, at any size: grown from real Fashion-MNIST embeddings.

Recall means something only on vectors whose neighbourhoods look like real catalogues'. Uniform random unit vectors
have none (every row is about as far as every other), and copies with large isotropic noise make the exact top-k a
matter of the noise. So:

- `real_embeddings()`: Fashion-MNIST pictures (Debian's `dataset-fashion-mnist`) embedded once by the project's own
  embedder (the benchmarks' seeded ResNet50: no ImageNet weights here) and cached;
- `big_catalogue.grown_vectors(base, n)` (shared with the tests): each row interpolates between a real base vector
  and one of its nearest real neighbours (a random point on the segment), plus a little noise (sigma 0.002 per
  dimension), re-normalised;
- the queries are held-out real embeddings: pictures none of the rows was grown from.

`big_catalogue.describe_neighbourhoods` checks the result: a query's exact neighbours must be clearly nearer than a
random row.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from benchmarks.data import CACHE

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
BASE = 4_000  # real vectors the catalogue is grown from
QUERIES = 1_000  # held-out real vectors, the queries


def fashion_mnist_images(count: int) -> np.ndarray:
    """The first `count` training pictures, (count, 28, 28) uint8."""
    data = gzip.decompress(FASHION_MNIST.read_bytes())
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return images[:count]


def real_embeddings(weights: Path, count: int = BASE + QUERIES, log=print) -> np.ndarray:
    """(count, 2048) float32 unit rows: Fashion-MNIST pictures through the app's own input path and embedder."""
    path = CACHE / f"fashion-mnist-embeddings-{count}-{weights.stem}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    from PIL import Image

    from fashion_search.embedder import Embedder
    from fashion_search.imaging import image_to_input

    log(f"  embedding {count:,} Fashion-MNIST pictures once (cached in {path}) ...")
    embedder = Embedder.load(weights)
    vectors = np.empty((count, 2048), dtype=np.float32)
    images = fashion_mnist_images(count)
    for start in range(0, count, 32):
        batch = [image_to_input(Image.fromarray(img).convert("RGB")) for img in images[start : start + 32]]
        vectors[start : start + len(batch)] = embedder.embed(np.stack(batch))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors, allow_pickle=False)
    os.replace(tmp, path)
    return vectors


def split(real: np.ndarray, queries: int = QUERIES) -> tuple[np.ndarray, np.ndarray]:
    """(base, held-out queries): the last `queries` real vectors are never grown from."""
    return real[:-queries], real[-queries:]
