"""The catalogue bundle: the artifact format on disk, written and loaded with every check the app relies on.

A bundle is a folder:
    manifest.json     format version, model, weights fingerprint, preprocessing id, dim, count, dtype,
                      sha256 of every other file, creation time, project version
    embeddings.npy    float32 (N, 2048), unit rows, no pickle
    filenames.json    N paths relative to the catalogue folder, in row order
    sources.json      N sha256 of the source image files, in row order (lets a rebuild reuse unchanged rows)
    metadata.jsonl    optional: one JSON object per row
    ivf*.npy, ivf.json    optional: the approximate nearest-neighbour index (fashion_search.approximate)
    images/           the catalogue images the app shows, at images/<filename>
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np

from fashion_search import __version__
from fashion_search.files import sha256_file, write_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
FILENAMES = "filenames.json"
SOURCES = "sources.json"
METADATA = "metadata.jsonl"
IMAGES = "images"
# The approximate index (fashion_search.approximate): all of these or none.
INDEX_FILES = ("ivf.json", "ivf_mean.npy", "ivf_components.npy", "ivf_centroids.npy", "ivf_lists.npy", "ivf_codes.npy")
VECTOR_LIST = "vectors.json"  # a revision put together from pieces: its pieces' files (fashion_search.vectors)
DATA_FILES = (EMBEDDINGS, FILENAMES, SOURCES, METADATA, *INDEX_FILES)
UNIT_TOLERANCE = 1e-3


class BundleError(Exception):
    """A bundle that cannot be served; the message names the file and the fix."""


class BundleMissingFile(BundleError):
    pass


class BundleHashMismatch(BundleError):
    pass


class BundleVersionError(BundleError):
    pass


class BundleFormatError(BundleError):
    pass


class BundleShapeError(BundleError):
    pass


class BundleValueError(BundleError):
    pass


class BundleCountMismatch(BundleError):
    pass


class BundleUnsafePath(BundleError):
    pass


class BundleMismatch(BundleError):
    """The bundle was made with other weights or preprocessing than the model that would query it."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    embeddings: np.ndarray  # (n, dim) float32, unit rows, memory-mapped (read-only); of a revision in pieces, a
    # vectors.StackedVectors over the pieces' files, read the same way (rows by number, len, shape)
    filenames: list[str]
    metadata: list[dict] | None  # one dict per row (shared: read, do not change)
    sources: list[str]  # sha256 of each row's source image, for incremental rebuilds
    manifest: dict
    pieces: tuple = ()  # a revision in pieces: its pieces' rows (pieces.PieceRows), which its lists point into

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES

    @property
    def has_index(self) -> bool:
        """Whether precompute.py --index approximate gave it an approximate nearest-neighbour index."""
        return INDEX_FILES[0] in self.manifest["files"]

    @property
    def weights(self) -> str:
        return self.manifest["model"]["weights"]

    @property
    def precision(self) -> str:
        """The arithmetic its vectors were computed in (bundles without the key are float32, the reference design's)."""
        return self.manifest["model"].get("precision", "float32")

    def image_path(self, row: int) -> Path:
        return self.images_dir / self.filenames[row]

    def check_compatible(self, model: dict, preprocessing: str) -> None:
        """Raise `BundleMismatch` unless this bundle was made by `model` (`Embedder.describe()`) and `preprocessing`."""
        mine = self.manifest["model"]
        runs = model.get("precision", "float32")
        if self.precision != runs and {**mine, "precision": None} == {**model, "precision": None}:
            raise BundleMismatch(
                f"The catalogue at {self.root} was made in {self.precision} arithmetic, but the model runs in {runs}. "
                f"Start the app with --precision {self.precision} (FASHION_PRECISION), or rebuild the catalogue with "
                f"precompute.py --precision {runs}."
            )
        if mine != model:
            raise BundleMismatch(
                f"The catalogue at {self.root} was made with weights {mine.get('weights')!r}, but the app runs "
                f"{model.get('weights')!r}. Rebuild it with precompute.py and the same --weights, or start the app "
                f"with the weights the catalogue was made with."
            )
        if self.manifest["preprocessing"] != preprocessing:
            raise BundleMismatch(
                f"The catalogue at {self.root} was made with preprocessing {self.manifest['preprocessing']!r}, "
                f"this version uses {preprocessing!r}. Rebuild it with precompute.py."
            )


def write_bundle(
    root: Path,
    *,
    embeddings: np.ndarray,
    filenames: list[str],
    model: dict,
    preprocessing: str,
    sources: Sequence[str] | None = None,
    metadata: Sequence[dict] | None = None,
    index_files: Sequence[str] = (),
) -> dict:
    """Write the data files and the manifest into `root`, whose images/<filename> files must already be there.

    Args:
        index_files: INDEX_FILES when the index was written into `root` (fashion_search.approximate.write); listed in
            the manifest with the other files. An index file left in `root` but not named here is removed.

    The manifest is written last, so a folder without one is never mistaken for a finished bundle.
    """
    root = Path(root)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = len(filenames)
    sources = sources if sources is not None else [sha256_file(root / IMAGES / name) for name in filenames]
    if embeddings.ndim != 2 or embeddings.shape[0] != n or len(sources) != n:
        raise ValueError(f"{embeddings.shape} embeddings for {n} filenames and {len(sources)} sources")
    if metadata is not None and len(metadata) != n:
        raise ValueError(f"{len(metadata)} metadata rows for {n} filenames")
    with open(root / EMBEDDINGS, "wb") as handle:
        np.save(handle, embeddings, allow_pickle=False)
    _write_json(root / FILENAMES, filenames)
    _write_json(root / SOURCES, list(sources))
    files = [EMBEDDINGS, FILENAMES, SOURCES]
    if metadata is not None:
        lines = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in metadata)
        (root / METADATA).write_text(lines, encoding="utf-8")
        files.append(METADATA)
    if set(index_files) - set(INDEX_FILES) or (index_files and len(set(index_files)) != len(INDEX_FILES)):
        raise ValueError(f"index_files must be all of {INDEX_FILES} or none, got {index_files}")
    files += list(index_files)
    for stale in set(INDEX_FILES) - set(index_files):  # an index of an earlier build would not match these rows
        (root / stale).unlink(missing_ok=True)
    files += [f"{IMAGES}/{name}" for name in filenames]
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "preprocessing": preprocessing,
        "dim": int(embeddings.shape[1]),
        "count": n,
        "dtype": "float32",
        "files": {name: sha256_file(root / name) for name in files},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "project_version": __version__,
    }
    write_atomic(root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def load_bundle(root: str | Path, *, verify_images: bool = True) -> Bundle:
    """Load and verify a bundle; raise a `BundleError` subclass naming what is wrong.

    Args:
        verify_images: also hash every image against the manifest (the data files are always hashed).
    """
    root = Path(root)
    if not root.is_dir():
        raise BundleMissingFile(
            f"No catalogue bundle at {root}: the folder does not exist. Build one with precompute.py."
        )
    manifest = read_manifest(root)
    files: dict = manifest["files"]
    if VECTOR_LIST in files:
        raise BundleFormatError(
            f"{root} is a Hub revision put together from its pieces, not a bundle: load it with "
            "fashion_search.images.load_catalogue (fashion_search.pieces.load_revision)."
        )
    for required in (EMBEDDINGS, FILENAMES, SOURCES):
        if required not in files:
            raise BundleFormatError(
                f"{root / MANIFEST} does not list {required}. Rebuild the bundle with precompute.py."
            )
    filenames = read_filenames(root)
    images = [name[len(IMAGES) + 1 :] for name in files if name.startswith(f"{IMAGES}/")]
    _check_paths(root, filenames + images, set(_plain_files(root / IMAGES)))
    for name in files:
        if not name.startswith(f"{IMAGES}/") and name not in DATA_FILES:
            raise BundleUnsafePath(f"{root / MANIFEST} lists {name!r}, which is not a bundle file.")
    if 0 < len(set(INDEX_FILES) & set(files)) < len(INDEX_FILES):
        missing = sorted(set(INDEX_FILES) - set(files))
        raise BundleFormatError(
            f"{root / MANIFEST} lists only part of the approximate index (not {missing}). Rebuild it with "
            "precompute.py --index approximate."
        )
    checked = [name for name in files if verify_images or not name.startswith(f"{IMAGES}/")]
    for name in checked:  # a plain loop: threads were slower for many small files on 2 cores
        _check_digest(root / name, _sha256(root / name), files[name])
    embeddings = _read_embeddings(root, manifest)
    sources = _read_json_list(root, SOURCES)
    metadata = _read_metadata(root) if METADATA in files else None
    n = len(embeddings)
    counts = {EMBEDDINGS: n, FILENAMES: len(filenames), SOURCES: len(sources), "manifest count": manifest["count"]}
    if metadata is not None:
        counts[METADATA] = len(metadata)
    if len(set(counts.values())) != 1:
        raise BundleCountMismatch(f"The bundle at {root} disagrees on its row count: {counts}. Rebuild it.")
    for name in filenames:
        if f"{IMAGES}/{name}" not in files:
            raise BundleFormatError(f"{root / MANIFEST} does not list the image of row {name!r}. Rebuild the bundle.")
    return Bundle(root, embeddings, filenames, metadata, sources, manifest)


def read_manifest(root: Path) -> dict:
    """The manifest of the bundle at `root`, checked (format version, keys and types); a BundleError otherwise."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleMissingFile(f"{path} is missing: this is not a finished bundle. Build it with precompute.py.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"{path} is not valid JSON ({exc}).") from exc
    if not isinstance(manifest, dict):
        raise BundleFormatError(f"{path} is not a JSON object.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleVersionError(
            f"{path} has format version {version!r}; this version of the app reads version {FORMAT_VERSION}. "
            "Rebuild the bundle with this version's precompute.py."
        )
    for key, kind in (("files", dict), ("model", dict), ("preprocessing", str), ("dim", int), ("count", int)):
        if not isinstance(manifest.get(key), kind):
            raise BundleFormatError(f"{path} has no valid {key!r}.")
    if manifest.get("dtype") != "float32":
        raise BundleFormatError(f"{path} declares dtype {manifest.get('dtype')!r}; bundles hold float32.")
    return manifest


def _check_paths(root: Path, names: list, plain: set[str]) -> None:
    """Every name is relative, and images/<name> stays inside images/ once symlinks are followed.

    `plain` holds the regular files reached without passing a symlink: those are inside by construction, so only
    the other names (symlinks, missing files) pay for resolving their path. Without an images/ folder (a Hub
    revision whose images stay in its shards) there is no link to follow: a relative name is all it takes.
    """
    images = None
    folder = (root / IMAGES).is_dir() or (root / IMAGES).is_symlink()
    for name in names:
        if not isinstance(name, str) or not name:
            raise BundleUnsafePath(f"{root / FILENAMES} holds {name!r}, which is not a file name.")
        if name in plain:
            continue
        if not is_relative_name(name):
            raise BundleUnsafePath(
                f"{root / FILENAMES} holds {name!r}: file names must be relative and stay inside images/."
            )
        if not folder:
            continue
        images = images or (root / IMAGES).resolve()
        target = (root / IMAGES / name).resolve()
        if not target.is_relative_to(images):
            raise BundleUnsafePath(f"images/{name} leads outside the bundle's images/ folder (to {target}).")


def is_relative_name(name: str) -> bool:
    """A name that stays below the folder it is joined to: not absolute, no `..`, no backslash, `~` or drive."""
    pure = PurePosixPath(name)
    return bool(name) and not (
        pure.is_absolute() or ".." in pure.parts or "\\" in name or name.startswith("~") or ":" in pure.parts[0]
    )


def _plain_files(folder: Path, prefix: str = ""):
    """Relative paths of the regular files under `folder`, not following (nor listing) symlinks."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_symlink() or "\\" in entry.name:
            continue
        if entry.is_dir():
            yield from _plain_files(Path(entry.path), f"{prefix}{entry.name}/")
        elif entry.is_file():
            yield f"{prefix}{entry.name}"


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _check_digest(path: Path, actual: str | None, digest: str) -> None:
    if actual is None:
        raise BundleMissingFile(f"{path} is missing from the bundle. Rebuild or re-download it.")
    if actual != digest:
        raise BundleHashMismatch(
            f"{path} does not match the manifest (sha256 {actual[:12]}…, expected {str(digest)[:12]}…): "
            "the file was changed or damaged. Rebuild or re-download the bundle."
        )


def read_filenames(root: Path) -> list[str]:
    """The bundle's file names (filenames.json), in row order; a BundleFormatError if not a list of strings."""
    return _read_json_list(Path(root), FILENAMES)


def _read_json_list(root: Path, name: str) -> list:
    path = root / name
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"{path} could not be read as JSON ({exc}).") from exc
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BundleFormatError(f"{path} must be a JSON list of strings.")
    return value


def _read_embeddings(root: Path, manifest: dict) -> np.ndarray:
    path = root / EMBEDDINGS
    try:  # memory-mapped: a million rows are 8 GB, paged in by the OS as the search reads them
        embeddings = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise BundleFormatError(f"{path} is not a plain numeric array ({exc}).") from exc
    except (OSError, EOFError) as exc:
        raise BundleFormatError(f"{path} could not be read as a .npy array ({exc}).") from exc
    if embeddings.dtype != np.float32:
        raise BundleFormatError(f"{path} holds {embeddings.dtype}, expected float32.")
    if embeddings.ndim != 2 or embeddings.shape[1] != manifest["dim"]:
        raise BundleShapeError(f"{path} has shape {embeddings.shape}, expected (N, {manifest['dim']}).")
    if len(embeddings) == 0:
        raise BundleShapeError(f"{path} has no rows: the catalogue is empty.")
    # Squared norms without an (n, d) temporary (unlike linalg.norm or isfinite over the array): a NaN or inf
    # anywhere in a row makes its norm non-finite, so only those rows are looked at element by element.
    norms = np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings))
    suspect = np.flatnonzero(~np.isfinite(norms))
    broken = [int(row) for row in suspect if not np.isfinite(embeddings[row]).all()]
    if broken:
        raise BundleValueError(f"{path} has non-finite values (NaN or inf) in rows {broken[:5]}.")
    bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_TOLERANCE)
    if bad.size:
        raise BundleValueError(
            f"{path} has {bad.size} rows that are not unit vectors (row {bad[0]} has norm {norms[bad[0]]:.4g})."
        )
    return np.ascontiguousarray(embeddings)


def _read_metadata(root: Path) -> list[dict]:
    """metadata.jsonl's rows, each repeated string kept once (a third of the memory of plain dicts at 44k rows)."""
    with open(root / METADATA, encoding="utf-8") as handle:
        return [
            {sys.intern(key): sys.intern(value) if type(value) is str else value for key, value in row.items()}
            for row in _metadata_rows(root / METADATA, handle)
        ]


def _metadata_rows(path: Path, lines) -> Iterator[dict]:
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BundleFormatError(f"{path} line {number} is not JSON ({exc}).") from exc
        if not isinstance(row, dict):
            raise BundleFormatError(f"{path} line {number} is not a JSON object.")
        yield row


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
