"""bfloat16 as an option: float32 stays the default (the reference design's arithmetic and manifest); a bfloat16
bundle says so and is served in bfloat16; a process runs one precision."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_runner import ROOT, AppProcess, app_env, free_port
from gradio_client import Client, handle_file

from fashion_search import config, webapp
from fashion_search.bundle import BundleMismatch, load_bundle
from fashion_search.embedder import Embedder, PrecisionUnavailable, cpu_has_bf16
from fashion_search.imaging import PREPROCESSING_ID

pytestmark = pytest.mark.slow  # starts the app in subprocesses
# A CPU's instructions are the one thing no install step brings, so this skips under CI too (CI runs on whichever
# machine the session had); on a CPU without them the refusal is what the app does, and
# test_bfloat16_is_refused_on_a_cpu_without_bf16_saying_so checks it on any CPU.
NEEDS_BF16 = pytest.mark.skipif(
    not cpu_has_bf16(), reason="needs a CPU with bf16 instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo)"
)


def test_the_precision_setting_flag_over_environment_unset_by_default():
    assert config.resolve([], {}).precision is None  # None: as the catalogue was made
    assert config.resolve([], {"FASHION_PRECISION": "bfloat16"}).precision == "bfloat16"
    assert config.resolve(["--precision", "float32"], {"FASHION_PRECISION": "bfloat16"}).precision == "float32"


def test_an_unknown_precision_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit):
        config.resolve([], {"FASHION_PRECISION": "fp8"})
    assert "FASHION_PRECISION='fp8': use one of float32, bfloat16" in capsys.readouterr().err


def test_float32_is_the_default_and_leaves_the_seeds_manifest_as_it_was(embedder, bundle_dir):
    assert embedder.precision == "float32" and "precision" not in embedder.describe()
    bundle = load_bundle(bundle_dir)
    assert bundle.precision == "float32" and "precision" not in bundle.manifest["model"]


def test_a_second_precision_in_one_process_is_refused(embedder):
    # This process runs float32 (the session's embedder): the bfloat16 rewrite would change that model too.
    with pytest.raises(PrecisionUnavailable, match="needs a process of its own"):
        Embedder.load("random", precision="bfloat16")
    with pytest.raises(PrecisionUnavailable, match="Unknown precision 'fp16'"):
        Embedder.load("random", precision="fp16")


def bf16_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """The float32 bundle, its manifest saying bfloat16: what a float32 app must refuse."""
    copy = tmp_path / "said-bf16"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["precision"] = "bfloat16"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_bfloat16_catalogue_is_not_searched_by_a_float32_model(embedder, weights_file, bundle_dir, tmp_path):
    copy = bf16_copy(bundle_dir, tmp_path)
    with pytest.raises(
        BundleMismatch,
        match="made in bfloat16 arithmetic, but the model runs in float32. Start the app "
        "with --precision bfloat16 .FASHION_PRECISION.",
    ) as caught:
        load_bundle(copy).check_compatible(embedder.describe(), PREPROCESSING_ID)
    assert "precompute.py --precision float32" in str(caught.value)

    settings = config.Settings(catalogue=str(copy), weights=str(weights_file), cache_dir=tmp_path / "cache")
    with pytest.raises(webapp.StartupError, match="made in bfloat16 arithmetic"):
        webapp.load_recommender(config.Settings(**{**vars(settings), "precision": "float32"}), warm_up=False)
    # Unset, the app follows the catalogue: bfloat16, which this float32 process cannot also run; it says where the
    # precision came from and how to serve the catalogue in float32.
    with pytest.raises(webapp.StartupError) as caught:
        webapp.load_recommender(settings, warm_up=False)
    assert str(caught.value).startswith("The catalogue was made in bfloat16 and FASHION_PRECISION is unset")
    assert "needs a process of its own" in str(caught.value) and "precompute.py --precision float32" in str(
        caught.value
    )


def precompute_bf16(catalogue: Path, weights_file: Path, out: Path, tmp_path: Path, prelude: str = ""):
    """`python precompute.py ... --precision bfloat16 --quiet`, `prelude` (Python) run first in its process."""
    argv = [
        "precompute.py",
        str(catalogue / "images"),
        "--out",
        str(out),
        "--weights",
        str(weights_file),
        "--metadata",
        str(catalogue / "styles.csv"),
        "--precision",
        "bfloat16",
        "--quiet",
    ]
    script = f"{prelude}\nimport runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path('precompute.py', run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=app_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bfloat16_is_refused_on_a_cpu_without_bf16_saying_so(catalogue, weights_file, tmp_path):
    # This CPU's flags as a CPU without bf16 would show them (read from /proc/cpuinfo, as cpu_has_bf16 does).
    prelude = (
        "from fashion_search import embedder\n"
        "flags = embedder.cpu_flags() - {'avx512_bf16', 'amx_bf16'}\n"
        "embedder.cpu_flags = lambda: flags"
    )
    done = precompute_bf16(catalogue, weights_file, tmp_path / "bundle-bf16", tmp_path, prelude)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: bfloat16 needs a CPU with bf16 instructions (AVX512_BF16 or AMX); this one has neither, where it "
        "would be slower than float32. Use float32 (the default)."
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "bundle-bf16" / "manifest.json").exists()


@NEEDS_BF16
def test_bfloat16_from_precompute_to_the_app_in_processes_of_their_own(catalogue, weights_file, bundle_dir, tmp_path):
    out = tmp_path / "bundle-bf16"
    done = precompute_bf16(catalogue, weights_file, out, tmp_path)
    assert done.returncode == 0, done.stderr
    bf16, fp32 = load_bundle(out), load_bundle(bundle_dir)
    assert bf16.precision == "bfloat16" and bf16.filenames == fp32.filenames
    cosine = np.sum(bf16.embeddings * fp32.embeddings, axis=1)
    assert cosine.min() > 0.999  # close to float32's vectors ...
    # ... and computed in bfloat16 all the same: float32's own rounding noise is about 1e-7, bfloat16's about 1e-3.
    assert np.abs(bf16.embeddings - fp32.embeddings).max() > 1e-4

    # The app, given no precision, runs the catalogue's: a catalogue picture finds itself first.
    port = free_port()
    args = ["--catalog", str(out), "--weights", str(weights_file), "--port", str(port)]
    with AppProcess(args, app_env(tmp_path), tmp_path / "app.log") as app:
        url = app.wait_ready(port)
        page = str(httpx.get(url + "config", timeout=30).json())
        _, listing = Client(url, verbose=False).predict(
            handle_file(str(out / "images" / bf16.filenames[3])), api_name="/recommend"
        )
    assert listing[0]["filename"] == bf16.filenames[3] and listing[0]["distance"] < 1e-3
    assert "The model runs in bfloat16" in (tmp_path / "app.log").read_text()
    assert "The model runs in bfloat16: faster, with results close to float32's" in page  # visitors are told too
