"""Figure 1: precompute images/s: `python precompute.py` vs the reference design's loop and the bare forward pass."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import data
from benchmarks.report import Row, ratio, value, verdict
from benchmarks.timing import Samples

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 32  # precompute.py's default
KAGGLE = 44_441  # images in Kaggle's fashion-product-images-small
_SUMMARY = re.compile(r"\((?P<rate>[\d.]+) images/s\).* in (?P<seconds>[\d.]+) s")


def seed_model(weights: Path):
    """The reference design's model: ResNet50(include_top=False) frozen, then GlobalMaxPooling2D, in a Sequential."""
    import keras
    from keras.applications.resnet50 import ResNet50

    base = ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    base.load_weights(str(weights))
    base.trainable = False
    return keras.Sequential([base, keras.layers.GlobalMaxPooling2D()])


def seed_extract_features(img_path: str, model) -> np.ndarray:
    """The reference design's function, verbatim but for imports and `verbose=0` (its progress bar is not timed)."""
    from keras.applications.resnet50 import preprocess_input
    from keras.preprocessing import image
    from numpy.linalg import norm

    img = image.load_img(img_path, target_size=(224, 224))
    img_array = image.img_to_array(img)
    expanded_img_array = np.expand_dims(img_array, axis=0)
    preprocessed_img = preprocess_input(expanded_img_array)
    result = model.predict(preprocessed_img, verbose=0).flatten()
    return result / norm(result)


def run(ctx, runs: int, images: int, seed_images: int) -> list[Row]:
    from benchmarks.forward import bare_forward
    from fashion_search.pipeline import build_bundle

    log = ctx.log
    work = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    try:
        log(f"figure 1: generating {images} catalogue JPEGs (60x80, every 20th 1080x1440) ...")
        paths = data.make_catalogue(work / "images", images)
        model = seed_model(ctx.weights)
        seed_extract_features(str(paths[0]), model)  # the first predict builds its function: not part of the rate
        forward = bare_forward(ctx.embedder)
        from fashion_search.imaging import load_input

        batches = [
            np.stack([load_input(p) for p in paths[i : i + BATCH_SIZE]]) for i in range(0, 4 * BATCH_SIZE, BATCH_SIZE)
        ]
        forward(batches[0]), ctx.embedder.embed(batches[0])  # trace and warm both

        seed_rate, bare_rate = Samples("img/s"), Samples("img/s")
        whole_rate, steady_rate, own_rate, one_off = Samples("img/s"), Samples("img/s"), Samples("img/s"), Samples("s")
        for r in range(runs):
            log(f"  round {r + 1}/{runs}: seed loop on {seed_images} images ...")
            chosen = paths[:seed_images]
            start = time.perf_counter()
            for path in chosen:
                seed_extract_features(str(path), model)
            seed_rate.values.append(len(chosen) / (time.perf_counter() - start))

            log(f"  round {r + 1}/{runs}: bare batched forward, {len(batches)} batches of {BATCH_SIZE} ...")
            start = time.perf_counter()
            for batch in batches:
                forward(batch)
            bare_rate.values.append(sum(map(len, batches)) / (time.perf_counter() - start))

            log(f"  round {r + 1}/{runs}: build_bundle in-process, model loaded and warm, on {images} files ...")
            out = work / f"inproc-{r}"
            start = time.perf_counter()
            build_bundle(work / "images", out, ctx.embedder, batch_size=BATCH_SIZE, quiet=True)
            steady = images / (time.perf_counter() - start)
            shutil.rmtree(out, ignore_errors=True)
            steady_rate.values.append(steady)

            log(f"  round {r + 1}/{runs}: python precompute.py on {images} files ...")
            out = work / f"bundle-{r}"
            wall, own, _ = _precompute(work / "images", out, ctx.weights)
            shutil.rmtree(out, ignore_errors=True)
            whole_rate.values.append(images / wall)
            own_rate.values.append(own)
            one_off.values.append(wall - images / steady)
        log(
            f"  seed {seed_rate.values}, bare {bare_rate.values}, steady {steady_rate.values}, "
            f"whole {whole_rate.values}, as precompute.py reports itself {own_rate.values}, one-off {one_off.values}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    seed, bare = seed_rate.median, bare_rate.median
    whole, steady = whole_rate.median, steady_rate.median
    projected = KAGGLE / (one_off.median + KAGGLE / steady)
    bare_text = f"(b) {bare:.3g} img/s"
    return [
        Row(
            "1a: the reference design's loop (load_img + model.predict per image)",
            "—",
            value(seed_rate),
            "",
            "reference (a)",
        ),
        Row(
            f"1b: bare batched forward (batch {BATCH_SIZE}, preprocessed tensors)",
            "—",
            value(bare_rate),
            "",
            "reference (b)",
        ),
        Row(
            f"1: precompute.py, whole command in a fresh process, {images} files",
            bare_text,
            value(whole_rate),
            f"{ratio(whole / bare)} (b); {ratio(whole / seed)} (a)",
            "≥ 0.9 × (b), ≥ 3 × (a)",
            verdict(whole >= 0.9 * bare),
        ),
        Row(
            "1: precompute steady state: build_bundle (hash, decode, embed, write the bundle) with the model "
            "loaded and warm",
            bare_text,
            value(steady_rate),
            f"{ratio(steady / bare)} (b); {ratio(steady / seed)} (a)",
            "≥ 0.9 × (b), ≥ 3 × (a)",
            verdict(steady >= 0.9 * bare),
        ),
        Row(
            "1: precompute.py one-off cost: whole command minus its files at the steady rate (interpreter, TF "
            "import, model build, first-call tracing, exit)",
            "—",
            value(one_off),
            "",
            "(information)",
        ),
        Row(
            f"1: precompute.py on Kaggle's {KAGGLE:,} files, PROJECTED as one-off cost + files / steady rate "
            "(not measured)",
            bare_text,
            f"{projected:.3g} img/s",
            ratio(projected / bare),
            "≥ 0.9 × (b)",
            verdict(projected >= 0.9 * bare),
        ),
    ]


def _precompute(images: Path, out: Path, weights: Path) -> tuple[float, float, float]:
    """Run the command; return (wall seconds, its own images/s, its own seconds)."""
    cmd = [
        sys.executable,
        str(ROOT / "precompute.py"),
        str(images),
        "--out",
        str(out),
        "--weights",
        str(weights),
        "--quiet",
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"precompute.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    match = _SUMMARY.search(done.stdout)
    if not match:
        raise RuntimeError(f"precompute.py printed no summary line:\n{done.stdout[-2000:]}")
    return wall, float(match["rate"]), float(match["seconds"])
