"""A catalogue's Hub repo as a mounted volume shows it, and what reading it costs: for tests and benchmarks.

mount = write_mount(bundle_folder, tmp_path / "mount")   # the repo's layout, as hub.push_bundle writes it
drop_cached(files); ...; resident(files)                   # what a start read of them (the page cache after)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


def write_mount(bundle_folder: Path, mount: Path, log=print) -> Path:
    """The bundle in the Hub repo's layout, as `hub.push_bundle` would send it, in `mount` (made once)."""
    from fashion_search import approximate, pieces
    from fashion_search.bundle import load_bundle
    from fashion_search.files import sha256_file

    if (mount / pieces.HEAD).is_file():
        return mount
    started = time.perf_counter()
    staging = mount.with_name(mount.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    bundle = load_bundle(bundle_folder, verify_images=False)
    index = approximate.load(bundle.root, bundle.embeddings) if bundle.has_index else None
    plan = pieces.plan_push(bundle, None, {}, index.data if index else None)
    made = []
    for number, rows in enumerate(plan.new):
        piece, local = pieces.write_piece(bundle, rows, index, staging / ".work")
        for path, file in local.items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, staging / path)
        shutil.rmtree(staging / ".work")
        made.append(piece)
        log(f"  piece {number + 1} of {len(plan.new)}")
    shared = pieces.index_files(index.data, bundle.root) if index else {}
    for path, file in shared.items():
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, staging / path)
    head = pieces.new_head(bundle, made, {path: sha256_file(staging / path) for path in shared})
    (staging / pieces.HEAD).write_bytes(head.to_bytes())
    os.replace(staging, mount)
    log(f"  written in {time.perf_counter() - started:.0f} s")
    return mount


def revision_files(mount: Path) -> dict[str, int]:
    """{repo path: bytes} of the head and every file it names."""
    from fashion_search import pieces

    head = pieces.read_head(mount / pieces.HEAD, str(mount))
    return {path: (mount / path).stat().st_size for path in [pieces.HEAD, *head.files()]}


def drop_cached(paths) -> None:
    os.sync()
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def resident(paths) -> dict[str, int]:
    """Bytes of each file held in the page cache (util-linux's fincore)."""
    out = {}
    paths = list(paths)
    for start in range(0, len(paths), 200):
        chunk = paths[start : start + 200]
        result = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,FILE", *map(str, chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        for line in result.stdout.splitlines():
            size, name = line.split(" ", 1)
            out[name] = int(size)
    return out
