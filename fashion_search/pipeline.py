"""The precompute pipeline: a folder of catalogue images -> a bundle; resumable, incremental, written aside, swapped.

Work happens in a folder beside the output (`.NAME.partial`): the bundle being made (`bundle/`) and, beside it, each
batch of images embedded and saved as a content-addressed chunk (named by the hash of its file names and contents),
so a run killed at any moment and started again picks up every finished chunk and makes the same bundle. Rows of an
existing bundle whose source file is unchanged (same name, same sha256) are reused. The previous bundle is replaced
only at the end, and the chunks are deleted only once the new bundle is in place: a run whose final swap fails (no
permission, say) is resumed without embedding anything again.

The embedding step is an engine's: `LocalEngine` runs the model in this process; `ray_engine.RayEngine` on a Ray
cluster. Everything else (listing, hashing, reuse, chunk files, the merge, the manifest) is the same for both.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashion_search import approximate
from fashion_search.bundle import IMAGES, MANIFEST, Bundle, BundleError, load_bundle, write_bundle
from fashion_search.catalogue import IMAGE_EXTENSIONS, list_files, metadata_for, read_styles
from fashion_search.files import (
    backup_path,
    link_or_copy,
    restore_interrupted_swap,
    sha256_file,
    swap_in,
    write_atomic,
)
from fashion_search.imaging import PREPROCESSING_ID, ImageError, image_to_input, open_image

log = logging.getLogger(__name__)

INDEX_KINDS = ("exact", "approximate")  # precompute.py --index
THUMBNAIL_SIZE = 256  # longest side of the images a bundle carries for the gallery
_STATE = "state.json"
_CHUNKS = "chunks"
_BUNDLE = "bundle"


class PrecomputeError(Exception):
    """A fatal precompute failure; the message names the fix."""


@dataclass
class BuildSummary:
    out_dir: Path
    count: int = 0  # rows in the bundle
    embedded: int = 0  # images run through the model in this run
    resumed: int = 0  # images taken from chunks of an interrupted run
    reused: int = 0  # rows taken unchanged from the previous bundle
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # the files not named as pictures (notes.txt)
    seconds: float = 0.0
    index: str = ""  # what became of the approximate index: trained, updated (or nothing: an exact bundle)

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        text = (
            f"{self.count} images in {self.out_dir}: {self.embedded} embedded ({self.rate:.1f} images/s), "
            f"{self.resumed} resumed, {self.reused} reused, {len(self.skipped)} skipped, in {self.seconds:.1f} s"
        )
        if self.index:
            text += f"; approximate index {self.index}"
        if self.ignored:  # e.g. "; other files ignored, not pictures by their names: 2 .csv, 1 .txt"
            kinds = Counter(PurePosixPath(name).suffix.lower() or "without extension" for name in self.ignored)
            counts = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
            text += f"; other files ignored, not pictures by their names: {counts}"
        return text


def build_bundle(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    embedder,
    *,
    metadata: str | os.PathLike | None = None,
    batch_size: int = 32,
    quiet: bool = False,
    workers: int = 2,
    index: str = "exact",
    retrain_index: bool = False,
) -> BuildSummary:
    """Embed every image under `images_dir` into the bundle `out_dir` (created, or updated in place).

    Args:
        embedder: an Embedder (its model runs here, `workers` threads decoding ahead of it), or an engine that runs
            the model elsewhere (`ray_engine.RayEngine`): anything with `describe()` and `embed_chunks(chunks)`.
        index: "exact" (no index: the app searches every row) or "approximate" (an inverted-file index for large
            catalogues, fashion_search.approximate): trained on the first build, then carried over to new rows
            without training unless `retrain_index`.
    """
    engine = embedder if hasattr(embedder, "embed_chunks") else LocalEngine(embedder, workers)
    if batch_size < 1:
        raise PrecomputeError(f"--batch-size must be at least 1, got {batch_size}.")
    if index not in INDEX_KINDS:
        raise PrecomputeError(f"--index must be one of {', '.join(INDEX_KINDS)}, got {index!r}.")
    started = time.perf_counter()
    images_dir, out = Path(images_dir), Path(out_dir)
    work = out.with_name(f".{out.name}.partial")
    staging = work / _BUNDLE
    try:
        restore_interrupted_swap(out)
        styles = read_styles(metadata) if metadata else None
        files, ignored = list_files(images_dir, exclude=[out, work, backup_path(out)])
        if not files:
            kinds = ", ".join(sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS))
            raise PrecomputeError(f"No images ({kinds}) found under {images_dir}.")
        summary = BuildSummary(out, ignored=ignored)
        model = engine.describe()
        _prepare_work(work, model, batch_size)
        digests = _hash_sources(images_dir, files, quiet, summary)
        previous, reused = _reuse_previous(out, staging, model, digests, summary)
        vectors = {name: previous.embeddings[row] for name, row in reused.items()}
        todo = [name for name in files if name in digests and name not in vectors]
        chunks = _plan_chunks(images_dir, work, todo, digests, batch_size)
        vectors.update(_embed(engine, chunks, quiet, summary))
        if not vectors:
            raise PrecomputeError(f"None of the {len(files)} images under {images_dir} could be read.")
        names = sorted(vectors)
        _drop_stale_images(staging / IMAGES, set(names))
        embeddings = np.stack([vectors[name] for name in names])
        index_files = ()
        if index == "approximate":
            old_rows = np.array([reused.get(name, -1) for name in names], dtype=np.int64)
            index_files = _write_index(staging, embeddings, previous, old_rows, retrain_index, summary)
        write_bundle(
            staging,
            embeddings=embeddings,
            filenames=names,
            sources=[digests[name] for name in names],
            metadata=metadata_for(names, styles) if styles is not None else None,
            model=model,
            preprocessing=PREPROCESSING_ID,
            index_files=index_files,
        )
        swap_in(staging, out)
        shutil.rmtree(work, ignore_errors=True)  # only now: until the bundle is in place, a re-run resumes from them
        if work.exists():
            log.warning("The bundle is in place, but %s could not be deleted: delete it by hand.", work)
    except OSError as exc:
        raise PrecomputeError(_os_error_message(exc, out)) from exc
    summary.count = len(names)
    summary.seconds = time.perf_counter() - started
    return summary


def _prepare_work(work: Path, model: dict, batch_size: int) -> None:
    """Keep an interrupted run's work folder only if it was made by the same model, preprocessing and batching.

    The engine is not part of it: chunks made by one engine are taken up by the other.
    """
    state = {"model": model, "preprocessing": PREPROCESSING_ID, "batch_size": batch_size}
    state_path = work / _STATE
    if work.exists():
        try:
            same = json.loads(state_path.read_text()) == state
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("Discarding %s: it was started with other settings.", work)
            shutil.rmtree(work)
    (work / _CHUNKS).mkdir(parents=True, exist_ok=True)
    (work / _BUNDLE / IMAGES).mkdir(parents=True, exist_ok=True)
    write_atomic(state_path, json.dumps(state, sort_keys=True).encode())


def _hash_sources(images_dir: Path, files: list[str], quiet: bool, summary: BuildSummary) -> dict[str, str]:
    """sha256 of each readable file; the others (dangling links, FIFOs, devices...) are skipped and listed."""
    digests = {}
    for name in tqdm(files, desc="hashing", unit="file", disable=quiet, leave=False):
        path = images_dir / name
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # reading a FIFO would wait forever for a writer
                reason = "not a regular file"
            else:
                digests[name] = sha256_file(path)
                continue
        except OSError as exc:
            reason = f"cannot read it ({exc.strerror or exc})"
        summary.skipped.append((name, reason))  # listed once, by the caller (precompute.py prints the list)
    return digests


def _reuse_previous(
    out: Path, staging: Path, model: dict, digests: dict[str, str], summary: BuildSummary
) -> tuple[Bundle | None, dict[str, int]]:
    """(the existing bundle, or None when there is none to reuse; file name -> its row there, for each file whose
    content is unchanged, its image linked into staging)."""
    if not (out / MANIFEST).exists():
        return None, {}
    try:
        previous = load_bundle(out)
        previous.check_compatible(model, PREPROCESSING_ID)
    except BundleError as exc:
        log.warning("Not reusing the existing bundle at %s: %s", out, exc)
        return None, {}
    reused = {}
    for row, (name, digest) in enumerate(zip(previous.filenames, previous.sources)):
        if digests.get(name) == digest:
            link_or_copy(previous.image_path(row), staging / IMAGES / name)
            reused[name] = row
    summary.reused = len(reused)
    return previous, reused


def _write_index(
    staging: Path,
    embeddings: np.ndarray,
    previous: Bundle | None,
    old_rows: np.ndarray,
    retrain: bool,
    summary: BuildSummary,
) -> tuple[str, ...]:
    """Write the approximate index into staging: the previous bundle's carried over to the new rows, or a new one."""
    carried = None
    if previous is not None and previous.has_index and not retrain:
        try:
            carried = approximate.load(previous.root, previous.embeddings).data
        except BundleError as exc:
            log.warning("Training a new approximate index: the existing one cannot be carried over (%s)", exc)
    started = time.perf_counter()
    if carried is None:
        data = approximate.train(embeddings)
        summary.index = f"trained: {data.info['lists']} lists over {len(embeddings)} rows"
    else:
        data = approximate.update(carried, embeddings, old_rows)
        added, trained = data.info["added_since_training"], data.info["trained_rows"]
        summary.index = f"updated without training: {added} rows added since it was trained on {trained}"
        if data.retraining_due:
            summary.index += "; re-training is due (run again with --retrain-index)"
            log.warning(
                "The approximate index was trained on %d rows and %d have been added since: its lists are drifting "
                "from the catalogue. Run precompute.py again with --retrain-index to train it afresh.",
                trained,
                added,
            )
    summary.index += f", in {time.perf_counter() - started:.1f} s"
    return tuple(approximate.write(staging, data))


@dataclass(frozen=True)
class Chunk:
    """One batch of images to embed, and where its result is saved (a re-run finds it there)."""

    names: list[str]
    sources: list[Path]  # the catalogue files
    copies: list[Path]  # the gallery copies, in the bundle being made
    saved: Path  # work/chunks/<hash of the names and their contents>.npz

    def finished(self) -> bool:
        """Saved by an earlier run, its copies still there (without them, a bundle swapped in earlier took them)."""
        return self.saved.exists() and all(copy.exists() for copy in self.copies)


@dataclass
class ChunkResult:
    """A chunk run through the model: its readable images' vectors and gallery copies, and the others skipped."""

    chunk: Chunk
    names: list[str]  # the images embedded, in the chunk's order
    rows: np.ndarray  # (len(names), 2048) float32, unit rows
    shown: list[bytes]  # each embedded image's gallery copy
    skipped: list[tuple[str, str]]  # (file, reason)


def _plan_chunks(images_dir: Path, work: Path, todo: list[str], digests: dict[str, str], size: int) -> list[Chunk]:
    chunks = []
    for start in range(0, len(todo), size):
        names = todo[start : start + size]
        key = hashlib.sha256("\n".join(f"{name}\t{digests[name]}" for name in names).encode()).hexdigest()[:32]
        copies = [work / _BUNDLE / IMAGES / name for name in names]
        chunks.append(Chunk(names, [images_dir / name for name in names], copies, work / _CHUNKS / f"{key}.npz"))
    return chunks


def _embed(engine, chunks: list[Chunk], quiet: bool, summary: BuildSummary) -> dict[str, np.ndarray]:
    """The vectors of every image in `chunks`: a finished chunk is loaded, the others are run by `engine`.

    Each result is saved as it comes, its gallery copies first and its chunk file last, whatever the engine.
    """
    vectors = {}
    total = sum(len(chunk.names) for chunk in chunks)
    with tqdm(total=total, desc="embedding", unit="img", disable=quiet, smoothing=0.1) as bar:
        pending = []
        for chunk in chunks:
            if not chunk.finished():
                pending.append(chunk)
                continue
            names, rows, skipped = _load_chunk(chunk.saved)
            summary.resumed += len(names)
            _collect(vectors, names, rows, skipped, summary, bar)
        if pending:
            for result in engine.embed_chunks(pending):
                copies = dict(zip(result.chunk.names, result.chunk.copies))
                for name, shown in zip(result.names, result.shown):
                    write_atomic(copies[name], shown)
                _save_chunk(result.chunk.saved, result.names, result.rows, result.skipped)
                summary.embedded += len(result.names)
                _collect(vectors, result.names, result.rows, result.skipped, summary, bar)
    return vectors


def _collect(vectors: dict, names: list[str], rows: np.ndarray, skipped: list, summary: BuildSummary, bar) -> None:
    """Take a chunk's vectors; its skipped files leave the progress bar's total, which counts the images embedded."""
    vectors.update(zip(names, rows))
    summary.skipped += skipped
    bar.total -= len(skipped)
    if summary.skipped:  # those of the hashing step too, as the closing summary counts them
        bar.set_postfix_str(f"{len(summary.skipped)} skipped", refresh=False)
    bar.update(len(names))


class LocalEngine:
    """Runs the model in this process; the next `workers` chunks are decoded in threads while one is embedded."""

    def __init__(self, embedder, workers: int = 2):
        self.embedder = embedder
        self.workers = workers

    def describe(self) -> dict:
        return self.embedder.describe()

    def embed_chunks(self, chunks: list[Chunk]) -> Iterator[ChunkResult]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            ahead = deque(pool.submit(_decode_all, chunk.sources) for chunk in chunks[: self.workers])
            for position, chunk in enumerate(chunks):
                decoded = ahead.popleft().result()
                if position + self.workers < len(chunks):
                    ahead.append(pool.submit(_decode_all, chunks[position + self.workers].sources))
                yield embed_decoded(self.embedder.embed, chunk, decoded)


def _decode_all(sources: list[Path]) -> list:
    return [decode_image(source) for source in sources]


def decode_image(source: Path) -> tuple[np.ndarray, bytes] | ImageError:
    """One catalogue file -> (the model's input, the gallery copy's bytes), or the ImageError it is skipped with.

    The copy is the file itself, or a thumbnail of at most THUMBNAIL_SIZE px for a larger picture.
    """
    try:
        data = source.read_bytes()
        img = open_image(data)
    except OSError as exc:
        return ImageError(f"cannot read it ({exc.strerror or exc})")
    except ImageError as exc:
        return ImageError(exc.reason)  # without the advice to upload another photo: this is a catalogue's file
    if max(img.size) <= THUMBNAIL_SIZE:
        shown = data
    else:
        thumb = img.copy()
        thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        thumb.save(buffer, format=Image.registered_extensions()[source.suffix.lower()])
        shown = buffer.getvalue()
    return image_to_input(img), shown


def embed_decoded(embed: Callable[[np.ndarray], np.ndarray], chunk: Chunk, decoded: list) -> ChunkResult:
    """Embed a chunk's decoded images in one forward pass; those that came back as an ImageError are skipped."""
    good = [(name, item) for name, item in zip(chunk.names, decoded) if not isinstance(item, ImageError)]
    skipped = [(name, str(item)) for name, item in zip(chunk.names, decoded) if isinstance(item, ImageError)]
    rows = embed(np.stack([item[0] for _, item in good])) if good else np.zeros((0, 0), np.float32)
    return ChunkResult(chunk, [name for name, _ in good], rows, [item[1] for _, item in good], skipped)


def _save_chunk(path: Path, names: list[str], rows: np.ndarray, skipped: list[tuple[str, str]]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, names=np.array(names, dtype=str), rows=rows, skipped=np.array(json.dumps(skipped)))
    write_atomic(path, buffer.getvalue())


def _load_chunk(path: Path) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
    with np.load(path, allow_pickle=False) as data:
        names = data["names"].tolist()
        rows = data["rows"]
        skipped = [tuple(item) for item in json.loads(str(data["skipped"]))]
    return names, rows, skipped


def _drop_stale_images(images: Path, keep: set[str]) -> None:
    for path in list(images.rglob("*")):
        if path.is_file() and path.relative_to(images).as_posix() not in keep:
            path.unlink()


def _os_error_message(exc: OSError, out: Path) -> str:
    where = exc.filename or out
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"Out of disk space while writing {where}. Free some space and run the same command again: it resumes."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"No permission to write {where}. Choose an --out folder you can write to."
    return f"Could not write {where}: {exc.strerror or exc}."
