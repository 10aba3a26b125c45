"""Keras' mixed_bfloat16 policy vs float32 for the embedder's model: throughput and top-5 agreement.

    python benchmarks/bf16_probe.py WEIGHTS.h5 --runs 3 --catalogue 256 --queries 32    # prints one JSON object

Both models load the same weights file. The dtype policy is process-global, hence a process of its own.
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


def build(weights: str, policy: str):
    """ResNet50 + max pooling built under Keras dtype policy `policy`, with `weights`: batch -> unit rows (float32)."""
    import keras
    import tensorflow as tf

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3), pooling="max")
        model.load_weights(weights)
    finally:
        keras.config.set_dtype_policy(previous)
    func = tf.function(
        lambda x: tf.cast(model(x, training=False), tf.float32),
        input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.float32)],
    )

    def embed(batch: np.ndarray) -> np.ndarray:
        out = func(batch).numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return embed


def embed(forward, batch: np.ndarray, size: int = 32) -> np.ndarray:
    return np.concatenate([forward(batch[i : i + size]) for i in range(0, len(batch), size)])


def main() -> dict:
    from benchmarks import data
    from fashion_search.imaging import load_input
    from sklearn.neighbors import NearestNeighbors

    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--catalogue", type=int, default=256)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    rng = np.random.default_rng(21)
    catalogue = np.stack([load_input(data.jpeg_bytes(data.draw_product(rng))) for _ in range(args.catalogue)])
    queries = np.stack([load_input(data.jpeg_bytes(data.draw_product(rng, (300, 400)))) for _ in range(args.queries)])
    fp32, bf16 = build(args.weights, "float32"), build(args.weights, "mixed_bfloat16")
    batch = catalogue[: args.batch]
    fp32(batch), bf16(batch), fp32(batch[:1]), bf16(batch[:1])  # trace and warm

    rates = {"fp32": [], "bf16": [], "fp32_single": [], "bf16_single": []}
    for _ in range(args.runs):
        for name, forward in (("fp32", fp32), ("bf16", bf16)):
            start = time.perf_counter()
            forward(batch)
            rates[name].append(len(batch) / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(4):
                forward(batch[i : i + 1])
            rates[f"{name}_single"].append(4 / (time.perf_counter() - start))

    vectors = {name: (embed(f, catalogue), embed(f, queries)) for name, f in (("fp32", fp32), ("bf16", bf16))}
    tops = {}
    for name, (cat, qry) in vectors.items():
        index = NearestNeighbors(n_neighbors=5, algorithm="brute", metric="euclidean").fit(cat)
        tops[name] = index.kneighbors(qry, return_distance=False)
    overlap = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(tops["fp32"], tops["bf16"])]))
    same_top1 = float(np.mean(tops["fp32"][:, 0] == tops["bf16"][:, 0]))
    max_diff = float(np.abs(vectors["fp32"][0] - vectors["bf16"][0]).max())
    return {"rates": rates, "overlap": overlap, "same_top1": same_top1, "max_abs_diff": max_diff}


if __name__ == "__main__":
    print(json.dumps(main()))
