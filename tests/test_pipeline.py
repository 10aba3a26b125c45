"""The precompute pipeline and its command: bad files skipped, kill-and-resume, incremental updates, write-aside."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_catalogue, reference_top_k
from PIL import Image

from fashion_search.bundle import load_bundle
from fashion_search.imaging import load_input
from fashion_search.pipeline import PrecomputeError, build_bundle


def precompute(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "precompute.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        **kwargs,
    )


def bundle_contents(root: Path) -> dict:
    """Everything in a bundle but the manifest's creation time."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("created")
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    files.pop("manifest.json")
    return {"manifest": manifest, "files": files}


def test_bundle_rows_are_the_catalogue(bundle_dir, catalogue, embedder):
    bundle = load_bundle(bundle_dir)
    assert bundle.filenames == sorted(p.name for p in (catalogue / "images").iterdir())
    assert bundle.embeddings.shape == (20, 2048)
    np.testing.assert_allclose(np.linalg.norm(bundle.embeddings, axis=1), 1.0, atol=1e-6)
    expected = embedder.embed(np.stack([load_input(catalogue / "images" / n) for n in bundle.filenames[:3]]))
    assert np.abs(bundle.embeddings[:3] - expected).max() <= 1e-5
    for row, name in enumerate(bundle.filenames):  # small images are carried as exact copies
        assert bundle.image_path(row).read_bytes() == (catalogue / "images" / name).read_bytes()
        assert bundle.metadata[row]["id"] == Path(name).stem
    assert bundle.metadata[0]["productDisplayName"] == "Product 1000, Blue Tshirts"  # Kaggle's unquoted comma


def test_near_duplicate_finds_its_original_first(bundle_dir, catalogue, embedder, tmp_path):
    bundle = load_bundle(bundle_dir)
    for row in (0, 7, 13):
        name = bundle.filenames[row]
        original = Image.open(catalogue / "images" / name).convert("RGB")
        copy = tmp_path / f"copy-{row}.jpg"
        original.resize((original.width * 2, original.height * 2), Image.BICUBIC).save(copy, quality=70)
        assert reference_top_k(embedder, bundle, copy)[0][0] == name


def test_large_images_are_carried_as_thumbnails(tmp_path, embedder):
    images = tmp_path / "images"
    make_catalogue(images, 2)
    Image.new("RGB", (1000, 500), "navy").save(images / "big.jpg")
    build_bundle(images, tmp_path / "out", embedder, quiet=True)
    with Image.open(tmp_path / "out" / "images" / "big.jpg") as thumb:
        assert thumb.size == (256, 128) and thumb.format == "JPEG"


@pytest.mark.slow
def test_command_skips_and_lists_bad_files(tmp_path, weights_file):
    images = tmp_path / "images"
    make_catalogue(images / "nested", 5)
    (images / "notes.jpg").write_text("this is text, not a picture")
    (images / "empty.png").write_bytes(b"")
    good = (images / "nested" / "1000.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 3])
    result = precompute(images, "--out", tmp_path / "out", "--weights", weights_file, "--batch-size", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "5 images in" in result.stdout and "3 skipped" in result.stdout
    for line in [
        "skipped notes.jpg: This file is not an image that can be read.",
        "skipped empty.png: The file is empty.",
        "skipped truncated.jpg: The image could not be decoded (Truncated File Read).",
    ]:
        assert line in result.stderr.splitlines()
    assert load_bundle(tmp_path / "out").filenames == [
        f"nested/{1000 + i}.{'png' if i == 3 else 'jpg'}" for i in range(5)
    ]


@pytest.mark.slow
def test_command_fatal_errors_name_the_fix(tmp_path, weights_file):
    missing = precompute(tmp_path / "nowhere", "--out", tmp_path / "out", "--weights", weights_file)
    assert missing.returncode == 1 and "is not a folder of images" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = precompute(tmp_path / "empty", "--out", tmp_path / "out", "--weights", weights_file)
    assert empty.returncode == 1 and "No images (bmp, gif, jpeg, jpg, png, webp) found" in empty.stderr
    weights = precompute(tmp_path / "empty", "--out", tmp_path / "out", "--weights", tmp_path / "none.h5")
    assert weights.returncode == 1 and "--weights PATH" in weights.stderr
    assert "Traceback" not in missing.stderr + empty.stderr + weights.stderr


@pytest.mark.slow
def test_killed_run_resumes_to_the_identical_bundle(tmp_path, weights_file):
    images = tmp_path / "images"
    make_catalogue(images, 24, seed=5)
    reference = precompute(
        images, "--out", tmp_path / "reference", "--weights", weights_file, "--batch-size", "4", "--quiet"
    )
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "resumed"
    chunks = tmp_path / ".resumed.partial" / "chunks"
    args = [
        sys.executable,
        str(ROOT / "precompute.py"),
        images,
        "--out",
        out,
        "--weights",
        weights_file,
        "--batch-size",
        "4",
    ]
    process = subprocess.Popen(list(map(str, args)), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(chunks.glob("*.npz"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before_kill = len(list(chunks.glob("*.npz")))
    assert 2 <= finished_before_kill < 6 and not out.exists(), "the kill should land mid-run"

    resumed = precompute(images, "--out", out, "--weights", weights_file, "--batch-size", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{finished_before_kill * 4} resumed" in resumed.stdout
    assert bundle_contents(out) == bundle_contents(tmp_path / "reference")
    assert not chunks.parent.exists()


def test_a_failed_final_swap_costs_no_re_embedding(tmp_path, embedder, monkeypatch):
    images = tmp_path / "images"
    make_catalogue(images, 10, seed=13)
    build_bundle(images, tmp_path / "reference", embedder, batch_size=4, quiet=True)
    out = tmp_path / "out"

    def no_permission(new, target):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr("fashion_search.pipeline.swap_in", no_permission)
    with pytest.raises(PrecomputeError, match="No permission to write"):
        build_bundle(images, out, embedder, batch_size=4, quiet=True)
    monkeypatch.undo()
    summary = build_bundle(images, out, embedder, batch_size=4, quiet=True)
    assert (summary.embedded, summary.resumed) == (0, 10)  # every chunk of the failed run taken up
    assert bundle_contents(out) == bundle_contents(tmp_path / "reference")
    assert not (tmp_path / ".out.partial").exists()


def test_chunks_whose_image_copies_are_gone_are_not_trusted(tmp_path, embedder, monkeypatch):
    """A kill right after the swap leaves the chunks but not the bundle folder they were made with."""
    images = tmp_path / "images"
    make_catalogue(images, 10, seed=17)
    build_bundle(images, tmp_path / "reference", embedder, batch_size=4, quiet=True)
    out = tmp_path / "out"
    from fashion_search import pipeline

    real_swap = pipeline.swap_in

    def swap_then_killed(new, target):
        real_swap(new, target)
        raise KeyboardInterrupt  # as a SIGINT landing between the swap and the clean-up

    monkeypatch.setattr(pipeline, "swap_in", swap_then_killed)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(images, out, embedder, batch_size=4, quiet=True)
    monkeypatch.undo()
    assert list((tmp_path / ".out.partial" / "chunks").glob("*.npz"))
    shutil.rmtree(out)  # the bundle is gone too: every row must be made again, images included
    summary = build_bundle(images, out, embedder, batch_size=4, quiet=True)
    assert (summary.embedded, summary.resumed) == (10, 0)
    assert bundle_contents(out) == bundle_contents(tmp_path / "reference")


def test_incremental_update_reuses_adds_and_drops(tmp_path, embedder):
    images = tmp_path / "images"
    names = make_catalogue(images, 10, seed=9)
    out = tmp_path / "out"
    build_bundle(images, out, embedder, batch_size=4, quiet=True)
    before = load_bundle(out)

    (images / names[0]).unlink()
    make_catalogue(tmp_path / "new", 2, seed=10)
    shutil.copy(tmp_path / "new" / "1000.jpg", images / "2000.jpg")
    shutil.copy(tmp_path / "new" / "1001.jpg", images / names[5])  # changed content under an old name
    summary = build_bundle(images, out, embedder, batch_size=4, quiet=True)
    after = load_bundle(out)

    assert summary.reused == 8 and summary.embedded == 2 and summary.count == 10
    assert after.filenames == sorted(set(names) - {names[0]} | {"2000.jpg"})
    for row, name in enumerate(after.filenames):
        if name in before.filenames and name != names[5]:
            np.testing.assert_array_equal(after.embeddings[row], before.embeddings[before.filenames.index(name)])
    fresh = tmp_path / "fresh"
    build_bundle(images, fresh, embedder, batch_size=4, quiet=True)
    assert np.abs(load_bundle(fresh).embeddings - after.embeddings).max() <= 1e-5
    assert not (out / "images" / names[0]).exists()


def test_failed_run_leaves_the_previous_bundle_intact(tmp_path, embedder):
    images = tmp_path / "images"
    make_catalogue(images, 4)
    out = tmp_path / "out"
    build_bundle(images, out, embedder, quiet=True)
    before = bundle_contents(out)
    for path in images.iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(PrecomputeError, match="None of the 4 images"):
        build_bundle(images, out, embedder, quiet=True)
    assert bundle_contents(out) == before


def test_unwritable_output_folder_is_a_clear_error(tmp_path, embedder):
    images = tmp_path / "images"
    make_catalogue(images, 2)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    with pytest.raises(PrecomputeError, match="Could not write|No permission"):
        build_bundle(images, blocker / "out", embedder, quiet=True)


def tuned_search(out: Path) -> dict:
    """What ivf.json records of the index's depth and recall, after a check of its shape."""
    search = json.loads((out / "ivf.json").read_text())["search"]
    assert search["lists"] >= 1 and search["candidates"] >= 1 and search["target_met"] and search["promise_kept"]
    return search


def test_an_approximate_index_is_added_carried_over_and_retrained(tmp_path, weights_file):
    """The command on an unchanged exact bundle embeds nothing and adds the index; new images join it without
    training until re-training is due; --retrain-index trains afresh; --index exact drops it. Each time its depth
    is tuned on altered copies of the catalogue's pictures, a third held out, and the summary says what it measured."""
    images, out = tmp_path / "images", tmp_path / "out"
    names = make_catalogue(images, 12, seed=11)
    common = ("--out", out, "--weights", weights_file, "--batch-size", 4, "--quiet")
    assert precompute(images, *common).returncode == 0
    exact = load_bundle(out)
    assert not exact.has_index

    added = precompute(images, *common, "--index", "approximate")
    assert added.returncode == 0, added.stderr
    assert "0 embedded" in added.stdout
    assert "approximate index trained: 12 lists over 12 rows" in added.stdout  # 4 sqrt(12) lists, at most one a row
    search = tuned_search(out)
    assert search["queries"] == "altered copies of catalogue pictures"
    assert (search["tuning"]["queries"], search["held_out"]["queries"]) == (8, 4)  # one a picture: 12 at most
    held, filtered = search["held_out"], search["held_out_filtered"]
    assert (
        f"search depth {search['candidates']:,} candidates from {search['lists']} lists' worth of rows "
        f"({held['rows_scored'][0]:,.0f} rows scanned a query), recall@5 {held['recall@5']:.3f} / @20 "
        f"{held['recall@20']:.3f} on 4 held-out queries (altered copies of catalogue pictures)"
    ) in added.stdout
    assert filtered is None or "with a 10% filter" in added.stdout
    indexed = load_bundle(out)
    assert indexed.has_index and indexed.filenames == exact.filenames
    np.testing.assert_array_equal(indexed.embeddings, exact.embeddings)
    lists = dict(zip(indexed.filenames, np.load(out / "ivf_lists.npy")))
    centroids = np.load(out / "ivf_centroids.npy")

    make_catalogue(tmp_path / "new", 8, seed=12)
    for i, path in enumerate(sorted((tmp_path / "new").iterdir())[:4]):
        shutil.copy(path, images / f"3{i:03d}{path.suffix}")
    grown = precompute(images, *common, "--index", "approximate")
    assert grown.returncode == 0, grown.stderr
    assert "4 embedded" in grown.stdout and "updated without training: 4 rows added since it was trained on 12" in (
        grown.stdout
    )
    assert "re-training is due" not in grown.stdout
    search = tuned_search(out)  # measured again, on the catalogue as it is now
    assert search["tuning"]["queries"] + search["held_out"]["queries"] == 16
    after = load_bundle(out)
    np.testing.assert_array_equal(np.load(out / "ivf_centroids.npy")[: len(centroids)], centroids)  # lists kept
    assert {name: list_ for name, list_ in zip(after.filenames, np.load(out / "ivf_lists.npy")) if name in lists} == (
        lists
    )
    for i, path in enumerate(sorted((tmp_path / "new").iterdir())[4:]):
        shutil.copy(path, images / f"4{i:03d}{path.suffix}")
    due = precompute(images, *common, "--index", "approximate")
    assert "8 rows added since it was trained on 12; re-training is due (run again with --retrain-index)" in due.stdout
    retrained = precompute(images, *common, "--index", "approximate", "--retrain-index")
    assert "0 embedded" in retrained.stdout and "approximate index trained: 18 lists over 20 rows" in retrained.stdout

    dropped = precompute(images, *common)
    assert dropped.returncode == 0 and "approximate index" not in dropped.stdout
    assert not load_bundle(out).has_index and not list(out.glob("ivf*"))
    assert names[0] in load_bundle(out).filenames


def test_the_index_is_measured_on_the_owners_photos_when_given(tmp_path, weights_file):
    """--tuning-photos: the owner's pictures replace the altered copies (30 at least, said plainly), and only with
    --index approximate."""
    images, photos, out = tmp_path / "images", tmp_path / "photos", tmp_path / "out"
    make_catalogue(images, 6, seed=13)
    make_catalogue(photos, 29, seed=14)
    common = ("--out", out, "--weights", weights_file, "--quiet")
    exact = precompute(images, *common, "--tuning-photos", photos)
    assert exact.returncode == 1 and "--tuning-photos measures the approximate index: add --index approximate." in (
        exact.stderr
    )
    few = precompute(images, *common, "--index", "approximate", "--tuning-photos", photos)
    message = f"--tuning-photos {photos} holds 29 pictures; measuring recall needs at least 30"
    assert few.returncode == 1 and message in few.stderr
    make_catalogue(tmp_path / "more", 31, seed=15)
    shutil.copy(tmp_path / "more" / "1030.jpg", photos / "extra.jpg")
    given = precompute(images, *common, "--index", "approximate", "--tuning-photos", photos)
    assert given.returncode == 0, given.stderr
    search = tuned_search(out)
    assert search["queries"] == "30 of the owner's photos" and "(30 of the owner's photos)" in given.stdout
    assert (search["tuning"]["queries"], search["held_out"]["queries"]) == (20, 10)
