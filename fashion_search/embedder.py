"""The embedder: ResNet50 (ImageNet, no top) + global max pooling -> unit 2048-d vectors. The only TensorFlow import.

Arithmetic: float32 by default, as the reference design. `precision="bfloat16"` turns on TensorFlow's oneDNN bfloat16
rewrite for CPUs with bf16 instructions: faster batches, results close to float32's (benchmarks/RESULTS.md, figure 5).
The rewrite is a setting of the whole TensorFlow process, so a process runs one precision.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from fashion_search.files import sha256_file
from fashion_search.imaging import IMAGE_SIZE

log = logging.getLogger(__name__)
# TensorFlow's start-up chatter is kept out of the log unless FASHION_DEBUG is set or TF_CPP_MIN_LOG_LEVEL=0 asks for
# TensorFlow's info lines. The variable quiets its C++ logging, but not the lines its libraries write to stderr while
# they load (TensorFlow 2.21: absl's pre-init warning and oneDNN's notice, each twice): see _import_tensorflow.
_SHOW_TF_START = bool(os.environ.get("FASHION_DEBUG")) or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
_TF_START_LINES = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
PRECISIONS = ("float32", "bfloat16")
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_process_precision: str | None = None  # fixed by the first Embedder.load of the process
# Where Keras downloads the ImageNet weights from (once; then kept in $KERAS_HOME/models, default ~/.keras/models).
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
WEIGHTS_HELP = (
    "Pass a local Keras weights file for ResNet50 without its top "
    "(resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, or a .weights.h5) with --weights PATH or "
    "FASHION_WEIGHTS=PATH, or use --weights random for a smoke run whose results mean nothing."
)


class WeightsUnavailable(RuntimeError):
    """The requested weights cannot be had (offline for ImageNet, a missing or unreadable file)."""


class PrecisionUnavailable(RuntimeError):
    """bfloat16 where the CPU cannot run it, or a second precision in one process."""


class Embedder:
    """Holds the model; `embed` turns a preprocessed batch into unit vectors in one forward pass."""

    def __init__(self, model, fingerprint: str, precision: str = "float32"):
        import tensorflow as tf

        _use_precision(precision)  # before the first call traces the model
        self.model = model
        self.fingerprint = fingerprint
        self.precision = precision
        # A fixed input signature: one traced graph for every batch size, no retracing per call.
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, *INPUT_SHAPE), tf.float32)],
            reduce_retracing=True,
        )

    @classmethod
    def load(
        cls,
        weights: str | os.PathLike = "imagenet",
        seed: int = 0,
        precision: str = "float32",
        threads: int | None = None,
    ) -> Embedder:
        """Build ResNet50 with `weights`: "imagenet" (Keras downloads and caches it), "random" (seeded), or a path.

        `threads` sizes TensorFlow's thread pools (a Ray actor's CPUs: TensorFlow ignores OMP_NUM_THREADS, the only
        limit Ray sets); None leaves TensorFlow's default, one thread per core of the machine.

        Raises:
            WeightsUnavailable: the weights cannot be had.
            PrecisionUnavailable: bfloat16 on a CPU without bf16 instructions, or not the precision of this process.
        """
        _import_tensorflow()
        import keras

        _use_precision(precision)  # refused before the model is built, not after
        if threads is not None:
            _use_threads(threads)
        weights = str(weights)
        if weights == "random":
            log.warning("USING RANDOM WEIGHTS (seed %d): embeddings and similar products are NOT meaningful.", seed)
            keras.utils.set_random_seed(seed)
            model = _resnet50(None)
        elif weights == "imagenet":
            try:
                model = _resnet50("imagenet")
            except Exception as exc:  # Keras raises a bare Exception when the download fails
                raise WeightsUnavailable(
                    f"The ImageNet weights for ResNet50 could not be downloaded ({exc}). Keras fetches them once "
                    f"(95 MB) from {IMAGENET_WEIGHTS_URL} into $KERAS_HOME/models (default ~/.keras/models); a copy "
                    f"of that file can be passed instead. {WEIGHTS_HELP}"
                ) from exc
        else:
            path = _weights_path(weights)
            model = _resnet50(None)
            try:
                model.load_weights(str(path))
            except Exception as exc:  # h5py and Keras raise many kinds for a wrong file
                raise WeightsUnavailable(f"Could not load weights from {path} ({exc}). {WEIGHTS_HELP}") from exc
        return cls(model, _fingerprint(weights, seed), precision)

    def describe(self) -> dict:
        """What made a bundle's vectors (its manifest's "model"); float32 adds nothing, so float32 bundles all match."""
        return _description(self.fingerprint, self.precision)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Args: batch (n, 224, 224, 3) float32, preprocessed. Returns (n, 2048) float32, unit rows."""
        features = self._forward(np.asarray(batch, dtype=np.float32)).numpy()
        return normalise_rows(features)


def describe_model(weights: str | os.PathLike = "imagenet", seed: int = 0, precision: str = "float32") -> dict:
    """What `Embedder.load(weights, seed, precision).describe()` gives, without TensorFlow or building the model.

    A driver that only hands work out (the Ray engine) uses it for the bundle's manifest and checks every actor's
    model against it. Raises WeightsUnavailable for a weights file that is missing or not .h5, as `load` does.
    """
    _check_precision_name(precision)
    return _description(_fingerprint(str(weights), seed), precision)


def _fingerprint(weights: str, seed: int) -> str:
    """Which weights made the vectors: "imagenet", "random:<seed>", or the weights file's sha256."""
    if weights == "random":
        return f"random:{seed}"
    if weights == "imagenet":
        return "imagenet"
    return f"sha256:{sha256_file(_weights_path(weights))}"


def _description(fingerprint: str, precision: str) -> dict:
    description = {**MODEL_DESCRIPTION, "weights": fingerprint}
    if precision != "float32":
        description["precision"] = precision
    return description


def normalise_rows(features: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm, as the reference design does (`result / norm(result)`)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / norms


def _use_precision(precision: str) -> None:
    global _process_precision
    _check_precision_name(precision)
    if _process_precision not in (None, precision):
        raise PrecisionUnavailable(
            f"This process already runs its model in {_process_precision}; TensorFlow's bfloat16 rewrite applies to "
            f"every model of a process, so {precision} needs a process of its own."
        )
    if precision == "bfloat16" and _process_precision is None:
        if not cpu_has_bf16():
            raise PrecisionUnavailable(
                "bfloat16 needs a CPU with bf16 instructions (AVX512_BF16 or AMX); this one has neither, where it "
                "would be slower than float32. Use float32 (the default)."
            )
        import tensorflow as tf

        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
        log.info("The model runs in bfloat16 (TensorFlow's oneDNN rewrite): faster, results close to float32's.")
    _process_precision = precision


def _check_precision_name(precision: str) -> None:
    if precision not in PRECISIONS:
        raise PrecisionUnavailable(f"Unknown precision {precision!r}: use float32 (the default) or bfloat16.")


def _use_threads(threads: int) -> None:
    import tensorflow as tf

    try:  # possible only before TensorFlow's runtime starts, i.e. before the process's first model
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.warning("TensorFlow has already started in this process: its thread pools stay as they are.")


def _import_tensorflow() -> None:
    """Import TensorFlow once, without its libraries' start-up lines on stderr (any other line is passed on)."""
    if "tensorflow" in sys.modules or _SHOW_TF_START:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)  # the lines come from C++, below sys.stderr: catch them at the descriptor
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(marker in line for marker in _TF_START_LINES):
                    sys.stderr.write(line)


def _weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"No weights file at {path}. {WEIGHTS_HELP}")
    if not path.name.endswith(".h5"):
        raise WeightsUnavailable(f"{path.name} is not a Keras .h5 / .weights.h5 file. {WEIGHTS_HELP}")
    return path


def cpu_has_bf16() -> bool:
    """Whether this CPU advertises bf16 instructions."""
    return not cpu_flags().isdisjoint(_BF16_CPU_FLAGS)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux: the "flags" line of /proc/cpuinfo); empty where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _resnet50(weights):
    from keras.applications import ResNet50

    # pooling="max" appends GlobalMaxPooling2D: the graph of the reference design's Sequential([ResNet50, pooling]).
    return ResNet50(weights=weights, include_top=False, input_shape=INPUT_SHAPE, pooling="max")
