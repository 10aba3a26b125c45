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
import math
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
from PIL import Image, ImageEnhance, ImageOps
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
TUNING_QUERIES = 600  # altered copies of catalogue pictures the index's depth is measured on: a minute's forward passes
HELD_OUT_SHARE = 1 / 3  # of them, those held out of the tuning, on which recall is reported
MIN_TUNING_PHOTOS = 30  # --tuning-photos: fewer cannot measure recall to a hundredth
TUNING_SEED = 0
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
    index: str = ""  # what became of the approximate index: trained, updated, its depth (nothing: an exact bundle)

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
    tuning_photos: str | os.PathLike | None = None,
) -> BuildSummary:
    """Embed every image under `images_dir` into the bundle `out_dir` (created, or updated in place).

    Args:
        embedder: an Embedder (its model runs here, `workers` threads decoding ahead of it), or an engine that runs
            the model elsewhere (`ray_engine.RayEngine`): anything with `describe()` and `embed_chunks(chunks)`.
        index: "exact" (no index: the app searches every row) or "approximate" (an inverted-file index for large
            catalogues, fashion_search.approximate): trained on the first build, then carried over to new rows
            without training unless `retrain_index`; either way its search depth is then tuned and its recall
            measured on altered copies of a sample of the catalogue's pictures, or on `tuning_photos` (a folder).
    """
    engine = embedder if hasattr(embedder, "embed_chunks") else LocalEngine(embedder, workers)
    if batch_size < 1:
        raise PrecomputeError(f"--batch-size must be at least 1, got {batch_size}.")
    if index not in INDEX_KINDS:
        raise PrecomputeError(f"--index must be one of {', '.join(INDEX_KINDS)}, got {index!r}.")
    if tuning_photos is not None and index != "approximate":
        raise PrecomputeError("--tuning-photos measures the approximate index: add --index approximate.")
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
            data = _index_data(embeddings, previous, old_rows, retrain_index, summary)
            queries = _tuning_queries(engine, images_dir, names, work, tuning_photos, quiet)
            index_files = _write_tuned_index(staging, data, embeddings, queries, summary)
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


def _index_data(
    embeddings: np.ndarray, previous: Bundle | None, old_rows: np.ndarray, retrain: bool, summary: BuildSummary
) -> approximate.IvfIndexData:
    """The approximate index: the previous bundle's carried over to the new rows, or a new one."""
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
    return data


def _write_tuned_index(
    staging: Path,
    data: approximate.IvfIndexData,
    embeddings: np.ndarray,
    queries: approximate.Queries,
    summary: BuildSummary,
) -> tuple[str, ...]:
    """Tune the index's search depth on `queries` (a part held out to report recall on) and write it into staging;
    an index below its recall target is written, and said so plainly, never silently."""
    started = time.perf_counter()
    tuning, held_out = queries.split(max(1, round(HELD_OUT_SHARE * len(queries))) if len(queries) > 1 else 0)
    data = approximate.tune(data, embeddings, tuning, held_out or tuning, seed=TUNING_SEED)
    search = data.info["search"]
    summary.index += f"; {_describe_tuning(search)}, measured in {time.perf_counter() - started:.1f} s"
    for warning in _tuning_warnings(search):
        log.warning("%s", warning)
        summary.index += f"; {warning}"
    return tuple(approximate.write(staging, data))


def _describe_tuning(search: dict) -> str:
    held, filtered = search["held_out"], search["held_out_filtered"]
    text = (
        f"search depth {search['candidates']:,} candidates from {search['lists']:,} lists' worth of rows "
        f"({held['rows_scored'][0]:,.0f} rows scanned a query), recall@5 {held['recall@5']:.3f} / @20 "
        f"{held['recall@20']:.3f} on {held['queries']} held-out queries ({search['queries']})"
    )
    if filtered:
        text += f", {filtered['recall@5']:.3f} / {filtered['recall@20']:.3f} with a {filtered['share']:.0%} filter"
    return text


def _tuning_warnings(search: dict) -> list[str]:
    """What precompute says plainly when the index falls short of its target (tuning) or promise (held out)."""
    warnings = []
    if not search["target_met"]:
        tuned = search["tuning"]
        needed = approximate.MIN_QUERIES_FOR_TARGET
        reached = (
            f"lists reaches recall@5 {approximate.RECALL_TARGET[5]} and @20 {approximate.RECALL_TARGET[20]} on this "
            f"catalogue at {approximate.CONFIDENCE:.0%} confidence (the nearest: {tuned['recall@5']:.3f} / "
            f"{tuned['recall@20']:.3f} on the tuning queries, lower bounds {tuned['lower_bound@5']:.3f} / "
            f"{tuned['lower_bound@20']:.3f})"
        )
        if tuned["queries"] < needed:  # even finding every neighbour, so few queries cannot show the target
            reason = (
                f"; {tuned['queries']} tuning queries cannot show it even when every neighbour is found: it takes "
                f"{needed} (with --tuning-photos, {math.ceil(needed / (1 - HELD_OUT_SHARE))} photos, a third held "
                "out). Give more photos, or build with --index exact (the app then compares every product)"
            )
        else:
            reason = (
                "; its neighbourhoods are too flat for the index. Build with --index exact (the app then compares "
                "every product), or train the index afresh with --retrain-index"
            )
        warnings.append(
            f"BELOW TARGET: no search depth within {approximate.MAX_CANDIDATES:,} candidates and "
            f"{approximate.MAX_LIST_SHARE:.0%} of the " + reached + reason
        )
    if not search["promise_kept"]:
        figures = [search["held_out"], search["held_out_filtered"] or search["held_out"]]
        shown = " and ".join(f"{f['recall@5']:.3f} / {f['recall@20']:.3f}" for f in figures)
        warnings.append(
            f"BELOW PROMISE: recall@5 / @20 on held-out queries {shown} (unfiltered and filtered), under "
            f"{approximate.RECALL_PROMISE[5]} / {approximate.RECALL_PROMISE[20]}. Consider --index exact, or "
            "--retrain-index"
        )
    return warnings


def _tuning_queries(
    engine, images_dir: Path, names: list[str], work: Path, photos: str | os.PathLike | None, quiet: bool
) -> approximate.Queries:
    """Queries like users' photos to measure the index on: the owner's `photos`, or altered copies (cropped,
    maybe mirrored, recoloured and rescaled, seeded) of up to TUNING_QUERIES of the catalogue's pictures, each
    with its product as its source (left out of its exact neighbours). Embedded by `engine`, as the catalogue."""
    folder = work / "tuning"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(TUNING_SEED)
    if photos is not None:
        files = [Path(photos) / name for name in list_files(photos)[0]]
        if len(files) < MIN_TUNING_PHOTOS:
            raise PrecomputeError(
                f"--tuning-photos {photos} holds {len(files)} pictures; measuring recall needs at least "
                f"{MIN_TUNING_PHOTOS}. Add photos, or leave the flag out to use altered copies of the catalogue's."
            )
        sources = {}  # none: the owner's photos are not the catalogue's
        paths = [files[i] for i in rng.permutation(len(files))]  # the held-out part: a random third
        kind = f"{len(files)} of the owner's photos"
    else:
        rows = rng.permutation(len(names))[:TUNING_QUERIES]
        sources, paths = {}, []
        for i, row in enumerate(rows.tolist()):
            try:
                picture = alter_picture(open_image((images_dir / names[row]).read_bytes()), rng)
            except (OSError, ImageError):
                continue  # embedded a moment ago, gone or changed since: one query fewer
            paths.append(folder / f"{i:04d}.jpg")
            picture.save(paths[-1], quality=90)
            sources[paths[-1].name] = row
        kind = "altered copies of catalogue pictures"
    chunks = [
        Chunk([path.name for path in paths[start : start + 32]], paths[start : start + 32], [], folder / "x.npz")
        for start in range(0, len(paths), 32)
    ]
    vectors, made = [], []
    with tqdm(total=len(paths), desc="tuning queries", unit="img", disable=quiet) as bar:
        for result in engine.embed_chunks(chunks):
            for name, reason in result.skipped:
                log.warning("Skipped the tuning photo %s: %s", name, reason)
            vectors.append(result.rows.reshape(len(result.names), -1))
            made += [sources.get(name, -1) for name in result.names]
            bar.update(len(result.chunk.names))
    shutil.rmtree(folder, ignore_errors=True)
    vectors = np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)
    return approximate.Queries(vectors.astype(np.float32), np.array(made, dtype=np.int64), kind)


def alter_picture(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy of a catalogue picture as a shopper's photo of the product might differ from it: cropped to 75-95 % of
    each side, mirrored half the time, brightness, contrast and colour within 15 %, and rescaled by 0.7-1.3."""
    width, height = img.size
    keep = rng.uniform(0.75, 0.95, 2)
    crop_w, crop_h = max(1, round(width * keep[0])), max(1, round(height * keep[1]))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    img = img.convert("RGB").crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(0.85, 1.15)))
    scale = float(rng.uniform(0.7, 1.3))
    return img.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BILINEAR)


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
