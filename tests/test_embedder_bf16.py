"""The embedder's optional bfloat16 mode (Keras mixed_bfloat16): float32 vectors, close to float32's, kept apart."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import draw_product
from fashion_search.embedder import DIM, MODEL_DESCRIPTION, Embedder
from fashion_search.imaging import load_input


@pytest.fixture(scope="module")
def bf16_embedder(weights_file):
    return Embedder.load(weights_file, precision="bfloat16")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(17)
    return np.stack([load_input(draw_product(rng, size)) for size in [(60, 80), (300, 400), (224, 224), (80, 60)]])


def test_bfloat16_gives_float32_unit_vectors_close_to_float32(bf16_embedder, embedder, batch):
    ours, reference = bf16_embedder.embed(batch), embedder.embed(batch)
    assert ours.shape == (len(batch), DIM) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(ours * reference, axis=1)
    assert cosine.min() > 0.99, cosine
    assert np.abs(ours - reference).max() > 0  # really computed in bfloat16, not float32 again


def test_bfloat16_is_recorded_and_float32_description_is_unchanged(bf16_embedder, embedder):
    assert embedder.describe() == {**MODEL_DESCRIPTION, "weights": embedder.fingerprint}
    assert bf16_embedder.describe() == {**embedder.describe(), "precision": "bfloat16"}


def test_global_dtype_policy_is_restored(bf16_embedder):
    import keras

    assert keras.config.dtype_policy().name == "float32"


def test_unknown_precision_is_refused(weights_file):
    with pytest.raises(ValueError, match="precision must be one of"):
        Embedder.load(weights_file, precision="float16")
