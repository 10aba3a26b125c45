"""Faults, really produced: SIGKILL at seeded points, a full disk (tmpfs), no write permission (read-only mount,
immutable folders), unreadable catalogue entries, and corrupt bundles refused by the app at start.

The disk and permission faults need root (mount, chattr): without it they skip, saying so, except under CI.
Each fault is checked to have happened, never assumed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from app_runner import app_env
from conftest import NEEDS_ROOT, ROOT, make_catalogue
from PIL import Image
from test_pipeline import bundle_contents, precompute

from fashion_search.bundle import load_bundle
from fashion_search.files import sha256_file
from fashion_search.pipeline import PrecomputeError, build_bundle

pytestmark = pytest.mark.slow  # runs, kills and re-runs precompute.py and the app

KILL_SEED = 6  # the kill points are drawn from this seed: the same three points every run
BATCH = 3


def run(*command: str | os.PathLike) -> None:
    subprocess.run([str(part) for part in command], check=True, capture_output=True)


def add_images(images: Path, count: int, seed: int, prefix: str) -> None:
    """`count` more generated product images in `images`, named <prefix><n>.jpg/.png."""
    scratch = images.parent / f"scratch-{seed}"
    for name in make_catalogue(scratch, count, seed=seed):
        shutil.move(scratch / name, images / f"{prefix}{name}")
    scratch.rmdir()


def chunk_names(chunks: Path) -> int:
    """Images held by the finished chunk files of a staging folder."""
    total = 0
    for path in chunks.glob("*.npz"):
        with np.load(path) as data:
            total += len(data["names"]) + len(json.loads(str(data["skipped"])))
    return total


# SIGKILL


def test_update_killed_three_times_resumes_to_the_identical_bundle(tmp_path, embedder, weights_file):
    """An update (12 old images, 2 of them changed, 40 new) is SIGKILLed at three seeded points, then finishes.

    After every kill the previous bundle is untouched; the final bundle equals, byte for byte, the one an
    uninterrupted update of the same previous bundle makes.
    """
    images = tmp_path / "images"
    make_catalogue(images, 12, seed=21)
    out = tmp_path / "out"
    build_bundle(images, out, embedder, batch_size=BATCH, quiet=True)
    previous = bundle_contents(out)
    add_images(images, 40, seed=22, prefix="2")
    shutil.copy(images / "21000.jpg", images / "1000.jpg")  # two old names with new contents
    shutil.copy(images / "21003.png", images / "1003.png")
    todo = 42  # 40 new + 2 changed
    total_chunks = -(-todo // BATCH)

    reference = tmp_path / "reference"
    shutil.copytree(out, reference)
    expected = build_bundle(images, reference, embedder, batch_size=BATCH, quiet=True)
    assert (expected.reused, expected.embedded) == (10, todo)

    rng = random.Random(KILL_SEED)
    plan = [  # points defined by progress, not by the clock: the same on a slow or a fast machine
        ("after chunks", rng.randint(1, 3)),  # right after the Nth chunk file lands
        ("after new image copies", rng.randint(2, 2 * BATCH)),  # mid-chunk: pictures copied, their chunk not saved
        ("after a new chunk, seconds", rng.uniform(0.0, 0.8)),  # somewhere between two chunk writes
    ]
    chunks = tmp_path / ".out.partial" / "chunks"
    copies = tmp_path / ".out.partial" / "bundle" / "images"
    command = [
        sys.executable,
        ROOT / "precompute.py",
        images,
        "--out",
        out,
        "--weights",
        weights_file,
        "--batch-size",
        str(BATCH),
        "--quiet",
    ]
    for how, amount in plan:
        done_before = len(list(chunks.glob("*.npz")))
        copied_before = len(list(copies.glob("*")))
        process = subprocess.Popen(
            list(map(str, command)), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started = time.monotonic()

        def waiting(process=process, how=how, amount=amount, started=started) -> bool:
            assert process.poll() is None, f"the run ended before the kill {how} {amount}"
            assert time.monotonic() - started < 300
            return True

        if how == "after chunks":
            while waiting() and len(list(chunks.glob("*.npz"))) < amount:
                time.sleep(0.02)
        elif how == "after new image copies":
            while waiting() and len(list(copies.glob("*"))) < copied_before + amount:
                time.sleep(0.01)
        else:
            while waiting() and len(list(chunks.glob("*.npz"))) <= done_before:
                time.sleep(0.02)
            time.sleep(amount)
        assert process.poll() is None, f"the run ended before the kill {how} {amount}"
        process.send_signal(signal.SIGKILL)
        process.wait()
        print(
            f"killed {how} {amount:.3g}: {len(list(chunks.glob('*.npz')))} chunks, {len(list(copies.glob('*')))} copies"
        )
        assert bundle_contents(out) == previous, f"the previous bundle changed under a kill {how} {amount}"
        assert len(list(chunks.glob("*.npz"))) < total_chunks

    resumed_images = chunk_names(chunks)
    assert 3 <= resumed_images < todo, "the kills should leave some, not all, of the work done"
    final = precompute(*command[2:])
    assert final.returncode == 0, final.stderr
    assert f"{todo - resumed_images} embedded" in final.stdout
    assert f"{resumed_images} resumed, 10 reused" in final.stdout
    assert bundle_contents(out) == bundle_contents(reference)
    assert not chunks.parent.exists()


# Out of disk space


@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path)
    try:
        yield path
    finally:
        run("umount", path)


def noise_images(images: Path, count: int, seed: int) -> None:
    """Photos that do not compress: 200x200 noise PNGs, ~120 kB each (carried into the bundle as they are)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(images / f"noise{i:02}.png")


@NEEDS_ROOT
def test_full_disk_is_a_clear_error_the_previous_bundle_survives_and_the_rerun_resumes(
    tmp_path, embedder, weights_file
):
    images = tmp_path / "images"
    make_catalogue(images, 4, seed=31)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "out"
        build_bundle(images, out, embedder, batch_size=BATCH, quiet=True)
        previous = bundle_contents(out)
        noise_images(images, 30, seed=32)  # 3.6 MB more to carry: more than the 2 MB disk holds
        reference = tmp_path / "reference"
        shutil.copytree(out, reference)
        build_bundle(images, reference, embedder, batch_size=BATCH, quiet=True)

        full = precompute(images, "--out", out, "--weights", weights_file, "--batch-size", BATCH, "--quiet")
        assert full.returncode == 1
        assert "error: Out of disk space while writing" in full.stderr
        assert "Free some space and run the same command again: it resumes." in full.stderr
        assert "Traceback" not in full.stderr
        assert bundle_contents(out) == previous
        load_bundle(out)
        assert not list(disk.rglob("*.tmp")), "a torn temporary file was left behind"

        run("mount", "-o", "remount,size=64m", disk)  # space freed
        again = precompute(images, "--out", out, "--weights", weights_file, "--batch-size", BATCH, "--quiet")
        assert again.returncode == 0, again.stderr
        resumed = int(again.stdout.split(" resumed")[0].split()[-1])
        assert resumed > 0, "the rerun should take up the chunks finished before the disk filled"
        assert bundle_contents(out) == bundle_contents(reference)


# No write permission (root ignores mode bits, so: a read-only mount, and the immutable attribute)


@contextmanager
def read_only(folder: Path):
    run("mount", "--bind", folder, folder)
    try:
        run("mount", "-o", "remount,bind,ro", folder)
        yield
    finally:
        run("umount", folder)


@contextmanager
def immutable(folder: Path):
    run("chattr", "+i", folder)
    try:
        yield
    finally:
        run("chattr", "-i", folder)


@NEEDS_ROOT
@pytest.mark.parametrize(
    "fault",
    [
        "read-only mount of the output's folder",  # fails at the start: the staging folder cannot be made
        "immutable output's folder",  # the same, by chattr +i
        "immutable bundle folder",  # fails at the very end: the finished bundle cannot be swapped in
    ],
)
def test_no_write_permission_is_a_clear_error_and_the_previous_bundle_survives(tmp_path, embedder, fault):
    images = tmp_path / "images"
    make_catalogue(images, 4, seed=41)
    parent = tmp_path / "bundles"
    out = parent / "out"
    build_bundle(images, out, embedder, batch_size=BATCH, quiet=True)
    previous = bundle_contents(out)
    add_images(images, 2, seed=42, prefix="3")
    guard = read_only(parent) if fault.startswith("read-only") else immutable(out if "bundle" in fault else parent)
    with guard:
        with pytest.raises(OSError):  # the fault is real: root cannot write there either
            (out if "bundle" in fault else parent).joinpath("probe").mkdir()
        with pytest.raises(
            PrecomputeError, match=r"^No permission to write .*Choose an --out folder you can write to\.$"
        ):
            build_bundle(images, out, embedder, batch_size=BATCH, quiet=True)
        assert bundle_contents(out) == previous
    assert len(load_bundle(out).filenames) == 4
    summary = build_bundle(images, out, embedder, batch_size=BATCH, quiet=True)  # once writable again: it finishes
    assert summary.count == 6 and summary.reused == 4
    # Failing at the swap, the run had embedded the 2 new images: the re-run takes them up from its chunks.
    assert (summary.embedded, summary.resumed) == ((0, 2) if "bundle" in fault else (2, 0))


# Unreadable catalogue entries


def test_unreadable_catalogue_entries_are_skipped_and_listed(tmp_path, weights_file):
    images = tmp_path / "images"
    make_catalogue(images, 3, seed=51)
    (images / "folder.jpg").mkdir()  # a folder named like a picture is walked into, not read
    make_catalogue(images / "folder.jpg", 1, seed=52)
    (images / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (images / "loop-a.jpg").symlink_to(images / "loop-b.jpg")
    (images / "loop-b.jpg").symlink_to(images / "loop-a.jpg")
    os.mkfifo(images / "fifo.jpg")  # reading it would block forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(images / "socket.png"))
    try:
        result = precompute(images, "--out", tmp_path / "out", "--weights", weights_file, "--quiet")
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert "4 images in" in result.stdout and "5 skipped" in result.stdout
    for line in [
        "skipped dangling.jpg: cannot read it (No such file or directory)",
        "skipped loop-a.jpg: cannot read it (Too many levels of symbolic links)",
        "skipped loop-b.jpg: cannot read it (Too many levels of symbolic links)",
        "skipped fifo.jpg: not a regular file",
        "skipped socket.png: not a regular file",
    ]:
        assert line in result.stderr.splitlines()
    assert load_bundle(tmp_path / "out").filenames == ["1000.jpg", "1001.jpg", "1002.jpg", "folder.jpg/1000.jpg"]


# Corrupt bundles: the app refuses to start, with the bundle error's message and no traceback


def _rehash(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = {name: sha256_file(root / name) for name in manifest["files"] if (root / name).exists()}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _save_npy(root: Path, array: np.ndarray) -> None:
    np.save(root / "embeddings.npy", array, allow_pickle=True)
    _rehash(root)


def _edit_json(root: Path, name: str, edit) -> None:
    path = root / name
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _corrupt_pickle(root):
    _save_npy(root, np.array([{"row": i} for i in range(20)], dtype=object))


def _corrupt_dimension(root):
    x = np.load(root / "embeddings.npy")[:, :1000]
    _save_npy(root, x / np.linalg.norm(x, axis=1, keepdims=True))


def _corrupt_nan(root):
    x = np.load(root / "embeddings.npy")
    x[3, 5] = np.nan
    _save_npy(root, x)


def _corrupt_norm(root):
    _save_npy(root, np.load(root / "embeddings.npy") * 3)


def _corrupt_count(root):
    _edit_json(root, "filenames.json", lambda names: names[:-1])
    _rehash(root)


def _corrupt_escape(root):
    _edit_json(root, "filenames.json", lambda names: ["../../escape.jpg", *names[1:]])
    _rehash(root)


def _corrupt_symlink(root):
    target = root / "images" / json.loads((root / "filenames.json").read_text())[0]
    target.unlink()
    target.symlink_to("/etc/hostname")


def _corrupt_hash(root):
    path = root / "images" / json.loads((root / "filenames.json").read_text())[2]
    path.write_bytes(path.read_bytes() + b"\0")


def _corrupt_missing(root):
    (root / "sources.json").unlink()


def _corrupt_version(root):
    _edit_json(root, "manifest.json", lambda manifest: {**manifest, "format_version": 99})


CORRUPTIONS = {  # every kind the issue names; load_bundle is checked on all, the app started on APP_STARTS
    "pickle": (_corrupt_pickle, "BundleFormatError", "is not a plain numeric array"),
    "dimension": (_corrupt_dimension, "BundleShapeError", "has shape (20, 1000), expected (N, 2048)"),
    "nan": (_corrupt_nan, "BundleValueError", "has non-finite values (NaN or inf) in rows [3]"),
    "norm": (_corrupt_norm, "BundleValueError", "20 rows that are not unit vectors"),
    "count": (_corrupt_count, "BundleCountMismatch", "disagrees on its row count"),
    "dotdot": (_corrupt_escape, "BundleUnsafePath", "file names must be relative and stay inside images/"),
    "symlink": (_corrupt_symlink, "BundleUnsafePath", "leads outside the bundle's images/ folder"),
    "hash": (_corrupt_hash, "BundleHashMismatch", "does not match the manifest"),
    "missing": (_corrupt_missing, "BundleMissingFile", "sources.json is missing from the bundle"),
    "version": (_corrupt_version, "BundleVersionError", "has format version 99"),
}


APP_STARTS = ["pickle", "symlink", "hash", "version"]  # each start costs ~25 s (TensorFlow, ResNet50 before the bundle)


def test_app_refuses_to_start_on_a_corrupt_bundle(tmp_path, bundle_dir, weights_file):
    """Each corrupt bundle: load_bundle names the error; `python app.py --catalog BAD` exits 1 with that message."""
    from fashion_search import bundle as bundle_module

    bad = {}
    for name, (corrupt, error, message) in CORRUPTIONS.items():
        root = tmp_path / name
        shutil.copytree(bundle_dir, root, symlinks=True)
        corrupt(root)
        with pytest.raises(getattr(bundle_module, error)) as refused:
            load_bundle(root)
        assert message in str(refused.value)
        bad[name] = (root, str(refused.value))

    names = APP_STARTS
    for pair in (names[i : i + 2] for i in range(0, len(names), 2)):  # two at a time: each imports TensorFlow
        starts = {
            name: subprocess.Popen(
                [sys.executable, str(ROOT / "app.py"), "--catalog", str(bad[name][0]), "--weights", str(weights_file)],
                cwd=ROOT,
                env=app_env(tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in pair
        }
        try:
            for name, process in starts.items():
                stdout, stderr = process.communicate(timeout=300)
                assert process.returncode == 1, (name, stderr)
                assert f"error: {bad[name][1]}" in stderr, (name, stderr)
                assert "Traceback" not in stderr + stdout, (name, stderr)
                assert "Running on" not in stdout, name
        finally:
            for process in starts.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
