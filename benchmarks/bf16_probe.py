"""One precision of the embedder, as the product runs it: forward-pass throughput, and the vectors for the overlap.

    python benchmarks/bf16_probe.py WEIGHTS.h5 --precision bfloat16 --vectors OUT.npz [--catalogue 256 --queries 32]

`Embedder.load(weights, precision=...)` is what app.py and precompute.py call. bfloat16 is TensorFlow setting of the
whole process, hence one process per precision. Prints one JSON object of images/s; writes the catalogue's and the
queries' vectors to OUT.npz.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

BATCHES = (32, 8, 1)  # precompute's default batch; the app's largest (8 clients); one query alone


def main() -> dict:
    from benchmarks import data
    from fashion_search.embedder import Embedder
    from fashion_search.imaging import load_input

    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("--precision", required=True)
    parser.add_argument("--vectors", required=True, type=Path)
    parser.add_argument("--catalogue", type=int, default=256)
    parser.add_argument("--queries", type=int, default=32)
    args = parser.parse_args()

    rng = np.random.default_rng(21)
    catalogue = np.stack([load_input(data.jpeg_bytes(data.draw_product(rng))) for _ in range(args.catalogue)])
    queries = np.stack([load_input(data.jpeg_bytes(data.draw_product(rng, (300, 400)))) for _ in range(args.queries)])
    embedder = Embedder.load(args.weights, precision=args.precision)
    rates = {}
    for size in BATCHES:
        batch = catalogue[:size]
        embedder.embed(batch)  # warm: the first call traces and optimises the graph
        repeats = max(2, 32 // size)
        start = time.perf_counter()
        for _ in range(repeats):
            embedder.embed(batch)
        rates[str(size)] = size * repeats / (time.perf_counter() - start)
    step = max(BATCHES)
    vectors = {
        name: np.concatenate([embedder.embed(images[i : i + step]) for i in range(0, len(images), step)])
        for name, images in (("catalogue", catalogue), ("queries", queries))
    }
    np.savez(args.vectors, **vectors)
    return {"precision": embedder.precision, "rates": rates}


if __name__ == "__main__":
    print(json.dumps(main()))
