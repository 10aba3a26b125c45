"""The embedder against the reference design's own extract_features (from its README) as the oracle."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from app_runner import ROOT, app_env
from conftest import draw_product
from sklearn.neighbors import NearestNeighbors

from fashion_search.embedder import DIM, Embedder, WeightsUnavailable
from fashion_search.imaging import load_input
from fashion_search.index import NeighbourIndex


@pytest.fixture(scope="module")
def seed_model(weights_file):
    """The reference design's model: ResNet50(include_top=False) frozen, then GlobalMaxPooling2D, in a Sequential."""
    import keras
    from keras.applications.resnet50 import ResNet50

    base = ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    base.load_weights(str(weights_file))
    base.trainable = False
    return keras.Sequential([base, keras.layers.GlobalMaxPooling2D()])


def seed_extract_features(img_path, model):
    """The reference design's function, verbatim but for imports."""
    from keras.applications.resnet50 import preprocess_input
    from keras.preprocessing import image
    from numpy.linalg import norm

    img = image.load_img(img_path, target_size=(224, 224))
    img_array = image.img_to_array(img)
    expanded_img_array = np.expand_dims(img_array, axis=0)
    preprocessed_img = preprocess_input(expanded_img_array)
    result = model.predict(preprocessed_img, verbose=0).flatten()
    normalized_result = result / norm(result)
    return normalized_result


@pytest.fixture(scope="module")
def ordinary_images(tmp_path_factory):
    """Ordinary RGB JPEG and PNG files of several sizes (smaller, larger and exactly 224x224)."""
    folder = tmp_path_factory.mktemp("ordinary")
    rng = np.random.default_rng(7)
    paths = []
    for i, size in enumerate([(60, 80), (224, 224), (300, 200), (80, 60), (500, 640), (33, 47)]):
        path = folder / (f"{i}.jpg" if i % 2 == 0 else f"{i}.png")
        draw_product(rng, size).save(path, quality=90) if path.suffix == ".jpg" else draw_product(rng, size).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_embeddings_equal_the_seed(embedder, seed_model, ordinary_images):
    ours = embedder.embed(np.stack([load_input(p) for p in ordinary_images]))
    seed = np.stack([seed_extract_features(str(p), seed_model) for p in ordinary_images])
    assert ours.shape == (len(ordinary_images), DIM) and ours.dtype == np.float32
    assert np.abs(ours - seed).max() <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


@pytest.mark.slow
def test_top5_equals_the_seeds_nearest_neighbors(embedder, seed_model, ordinary_images, bundle_dir):
    from fashion_search.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    seed_catalogue = np.stack([seed_extract_features(str(bundle.image_path(r)), seed_model) for r in range(5)])
    ours_catalogue = bundle.embeddings[:5]
    assert np.abs(seed_catalogue - ours_catalogue).max() <= 1e-5

    neighbors = NearestNeighbors(n_neighbors=5, algorithm="brute", metric="euclidean")
    neighbors.fit(bundle.embeddings)
    index = NeighbourIndex(bundle.embeddings)
    for path in ordinary_images:
        features = seed_extract_features(str(path), seed_model)
        _, seed_indices = neighbors.kneighbors([features])
        ours = index.search(embedder.embed(load_input(path)[None]), k=5)[0]
        assert [n.row for n in ours] == seed_indices[0].tolist()


def test_batch_results_do_not_depend_on_batch_composition(embedder, ordinary_images):
    batch = np.stack([load_input(p) for p in ordinary_images])
    together = embedder.embed(batch)
    alone = np.concatenate([embedder.embed(batch[i : i + 1]) for i in range(len(batch))])
    assert np.abs(together - alone).max() <= 1e-5


def test_fingerprint_is_the_weights_files_sha256(embedder, weights_file):
    import hashlib

    assert embedder.fingerprint == "sha256:" + hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert embedder.describe()["weights"] == embedder.fingerprint


@pytest.mark.slow
def test_random_weights_are_seeded_and_announced(caplog, ordinary_images):
    batch = load_input(ordinary_images[0])[None]
    first = Embedder.load("random", seed=3)
    second = Embedder.load("random", seed=3)
    assert first.fingerprint == "random:3"
    assert "RANDOM WEIGHTS" in caplog.text
    np.testing.assert_array_equal(first.embed(batch), second.embed(batch))


@pytest.mark.slow
def test_keras_v3_weights_file_loads_the_same_model(tmp_path, embedder, ordinary_images):
    path = tmp_path / "copy.weights.h5"
    embedder.model.save_weights(path)
    other = Embedder.load(path)
    batch = np.stack([load_input(p) for p in ordinary_images[:2]])
    np.testing.assert_array_equal(other.embed(batch), embedder.embed(batch))


@pytest.mark.parametrize("name", ["missing.h5", "notes.txt"])
def test_bad_weights_path_names_the_fix(tmp_path, name):
    if name == "notes.txt":
        (tmp_path / name).write_text("not weights")
    with pytest.raises(WeightsUnavailable, match="--weights PATH"):
        Embedder.load(tmp_path / name)


def test_corrupt_weights_file_is_refused(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(WeightsUnavailable, match="Could not load weights"):
        Embedder.load(path)


@pytest.mark.slow  # TensorFlow starts in a process of its own
def test_imagenet_offline_says_how_to_pass_a_weights_file(tmp_path):
    # In a process of its own: a fresh Keras cache (Keras reads KERAS_HOME once, when imported), and the download sent
    # to a proxy nothing listens on, so it fails as it does offline, online or not (as test_config.py does for the app).
    refused = "http://127.0.0.1:9"
    env = app_env(tmp_path, https_proxy=refused, HTTPS_PROXY=refused, http_proxy=refused, HTTP_PROXY=refused)
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    script = (
        "from fashion_search.embedder import Embedder, WeightsUnavailable\n"
        "try:\n"
        "    Embedder.load('imagenet')\n"
        "except WeightsUnavailable as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 3, done.stdout + done.stderr
    message = done.stdout.strip().splitlines()[-1]  # after Keras' "Downloading data from ..."
    assert message.startswith(
        "The ImageNet weights for ResNet50 could not be downloaded (URL fetch failure on https://"
    )
    assert "[Errno 111] Connection refused)" in message  # the closed loopback port: nothing left this machine
    assert "with --weights PATH or FASHION_WEIGHTS=PATH" in message
