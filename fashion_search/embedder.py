"""The embedder: ResNet50 (ImageNet, no top) + global max pooling -> unit 2048-d vectors. The only TensorFlow import."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fashion_search.files import sha256_file
from fashion_search.imaging import IMAGE_SIZE

log = logging.getLogger(__name__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, unless asked for

DIM = 2048
INPUT_SHAPE = (*IMAGE_SIZE, 3)
MODEL_DESCRIPTION = {
    "architecture": "keras.applications.ResNet50",
    "include_top": False,
    "input_shape": list(INPUT_SHAPE),
    "pooling": "GlobalMaxPooling2D",
    "normalisation": "l2",
    "dim": DIM,
}
WEIGHTS_HELP = (
    "Pass a local Keras weights file for ResNet50 without its top "
    "(resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, or a .weights.h5) with --weights PATH or "
    "FASHION_WEIGHTS=PATH, or use --weights random for a smoke run whose results mean nothing."
)


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had (offline for ImageNet, a missing or unreadable file)."""


class Embedder:
    """Holds the model; `embed` turns a preprocessed batch into unit vectors in one forward pass."""

    def __init__(self, model, fingerprint: str):
        import tensorflow as tf

        self.model = model
        self.fingerprint = fingerprint
        # A fixed input signature: one traced graph for every batch size, no retracing per call.
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)],
            reduce_retracing=True,
        )

    @classmethod
    def load(cls, weights: str | os.PathLike = "imagenet", seed: int = 0) -> "Embedder":
        """Build ResNet50 with `weights`: "imagenet" (Keras downloads and caches it), "random" (seeded), or a path."""
        import keras

        weights = str(weights)
        if weights == "random":
            log.warning(
                "USING RANDOM WEIGHTS (seed %d): embeddings and similar products are NOT meaningful.", seed
            )
            keras.utils.set_random_seed(seed)
            return cls(_resnet50(None), f"random:{seed}")
        if weights == "imagenet":
            try:
                model = _resnet50("imagenet")
            except Exception as exc:  # Keras raises a bare Exception when the download fails
                raise WeightsUnavailable(
                    f"The ImageNet weights for ResNet50 could not be downloaded ({exc}). {WEIGHTS_HELP}"
                ) from exc
            return cls(model, "imagenet")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"No weights file at {path}. {WEIGHTS_HELP}")
        if not path.name.endswith(".h5"):
            raise WeightsUnavailable(f"{path.name} is not a Keras .h5 / .weights.h5 file. {WEIGHTS_HELP}")
        model = _resnet50(None)
        try:
            model.load_weights(str(path))
        except Exception as exc:  # h5py and Keras raise many kinds for a wrong file
            raise WeightsUnavailable(f"Could not load weights from {path} ({exc}). {WEIGHTS_HELP}") from exc
        return cls(model, f"sha256:{sha256_file(path)}")

    def describe(self) -> dict:
        return {**MODEL_DESCRIPTION, "weights": self.fingerprint}

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Args: batch (n, 224, 224, 3) float32, preprocessed. Returns (n, 2048) float32, unit rows."""
        features = self._forward(np.asarray(batch, dtype=np.float32)).numpy()
        return normalise_rows(features)


def normalise_rows(features: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm, as the seed does (`result / norm(result)`)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / norms


def _resnet50(weights):
    from keras.applications import ResNet50

    # pooling="max" appends GlobalMaxPooling2D: the same graph as the seed's Sequential([ResNet50, GlobalMaxPooling2D]).
    return ResNet50(weights=weights, include_top=False, input_shape=INPUT_SHAPE, pooling="max")
