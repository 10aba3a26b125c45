"""A revision's vectors left in its pieces' files and read as one (n, d) array, without a copy.

    vectors = open_stacked(list_vector_files(folder), dim)    # the list pieces.assemble wrote
    vectors[rows]                # float32 rows, as from an array (an int, a slice, or row numbers)
    vectors.squared_norms()      # (n,) float32, computed once per file in this process
    vectors.scores(queries)      # (n, m) float32: squared distance less each query's squared norm

A revision of a catalogue in pieces (fashion_search.pieces) is its pieces' vectors less the rows removed since each
was written. Copying them into one file would cost a swap a write of the whole catalogue's vectors (8 GB at a
million products) and a second copy in the page cache while the old snapshot still serves. Here each piece's file is
memory-mapped where the download left it: two snapshots that share a piece share its pages, and what a piece's rows
cost to compute once (their norms) is remembered per file for as long as a snapshot uses it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
import weakref
from pathlib import Path

import numpy as np

from fashion_search.bundle import (
    VECTOR_LIST,
    BundleFormatError,
    BundleHashMismatch,
    BundleMissingFile,
    BundleShapeError,
)

_FORMAT_VERSION = 1
_norms: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (device, inode, size) -> squared norms
_norms_lock = threading.Lock()


class StackedVectors:
    """(n, d) float32 rows: the live rows of several memory-mapped files, in order; read like a read-only array."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, parts: list[tuple[np.ndarray, np.ndarray]]):
        """`parts`: (a file's (rows, d) array, the rows of it that are live, sorted) for each piece, in order."""
        if not parts:
            raise ValueError("no pieces")
        self.parts = [(array, np.asarray(live, dtype=np.int64)) for array, live in parts]
        self.whole = [len(live) == len(array) for array, live in self.parts]  # no row removed: read in place
        counts = [len(live) for _, live in self.parts]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # part i: rows starts[i]:starts[i+1]
        self.shape = (int(self.starts[-1]), int(self.parts[0][0].shape[1]))
        self._squared_norms: np.ndarray | None = None
        self._keep: list[np.ndarray] = []  # the per-file norms this uses, kept alive (shared with other snapshots)
        # A part checked as read -> (its name, its rows' digests, which of its rows were checked)
        self._as_read: dict[int, tuple[str, list[str], np.ndarray]] = {}

    @property
    def checked_as_read(self) -> bool:
        """Whether any part's rows are checked as they are read (a mounted repo's)."""
        return bool(self._as_read)

    def check_as_read(self, part: int, digests: list[str], name: str) -> None:
        """Check each row of part `part` the first time it is read: the first 16 hex digits of the sha256 of its
        float32 bytes must be `digests[row]` (rows.json's), else BundleHashMismatch naming `name`."""
        self._as_read[part] = (name, digests, np.zeros(len(self.parts[part][0]), dtype=bool))
        # Read where it lies (a mounted volume: every page fetched on first read), its rows are read a few at a
        # time: no readahead around them (the kernel's default reads 128 KB around each).
        pages = getattr(self.parts[part][0], "_mmap", None)  # (numpy.memmap's mmap object)
        if pages is not None and hasattr(mmap, "MADV_RANDOM"):
            pages.madvise(mmap.MADV_RANDOM)

    def _check(self, part: int, rows: np.ndarray, values: np.ndarray) -> None:
        """`values` are the rows `rows` (of part `part`, checked as read) just read: those not checked before are
        checked now."""
        name, digests, checked = self._as_read[part]
        for row, value in zip(rows, values):
            if checked[row]:
                continue
            if hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16] != digests[row]:
                raise BundleHashMismatch(
                    f"{name}: vector row {row} does not match its digest in rows.json (the file was changed or "
                    "damaged). Push the catalogue again."
                )
            checked[row] = True

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self.gather(np.array([row]))[0]
        if isinstance(key, slice):
            return self.gather(np.arange(len(self))[key])
        rows = np.asarray(key)
        if rows.dtype == bool:
            return self.gather(np.flatnonzero(rows))
        return self.gather(rows.astype(np.int64, copy=False))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.gather(np.arange(len(self)))  # a copy of every row: for small catalogues and tools, not the app
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) float32: these rows, in the order given (each file read only where they lie)."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} rows")
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        if rows.size > 1 and np.all(rows[1:] > rows[:-1]):  # ascending: each part's rows are one run, in order
            bounds = np.searchsorted(rows, self.starts)
            for part in np.flatnonzero(np.diff(bounds)):
                run = slice(bounds[part], bounds[part + 1])
                array, live = self.parts[part]
                local = live[rows[run] - self.starts[part]]
                out[run] = array[local]  # the file is read front to back
                if part in self._as_read:
                    self._check(part, local, out[run])
            return out
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        for part in np.unique(part_of):
            mine = np.flatnonzero(part_of == part)
            array, live = self.parts[part]
            local = live[rows[mine] - self.starts[part]]
            order = np.argsort(local, kind="stable")
            out[mine[order]] = array[local[order]]
            if part in self._as_read:
                self._check(part, local, out[mine])
        return out

    def squared_norms(self) -> np.ndarray:
        """(n,) float32: each row's squared norm; a file's are computed once while any snapshot in the process uses
        them."""
        if self._squared_norms is None:
            pieces = []
            for array, live in self.parts:
                norms = _file_norms(array)
                self._keep.append(norms)
                pieces.append(norms if len(live) == len(array) else norms[live])
            self._squared_norms = np.concatenate(pieces)
        return self._squared_norms

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(n, m) float32: |row|^2 - 2 row . query for each row and query (the squared distance less |query|^2), a
        piece at a time: as `norms[:, None] - 2 * (vectors @ queries.T)` over one array."""
        norms = self.squared_norms()
        out = np.empty((len(self), len(queries)), dtype=np.float32)
        for part, ((array, live), whole, start, stop) in enumerate(
            zip(self.parts, self.whole, self.starts, self.starts[1:])
        ):
            if part in self._as_read and not self._as_read[part][2].all():  # every row is read: check all
                self._check(part, np.arange(len(array)), array)
            products = array @ queries.T
            out[start:stop] = norms[start:stop, None] - 2 * (products if whole else products[live])
        return out


def _file_norms(array: np.ndarray) -> np.ndarray:
    """The squared norms of every row of a memory-mapped file, shared by every snapshot that maps the same file."""
    key = _file_key(array)
    with _norms_lock:
        found = _norms.get(key) if key is not None else None
    if found is not None:
        return found
    norms = np.einsum("ij,ij->i", array, array)
    if key is not None:
        with _norms_lock:
            norms = _norms.setdefault(key, norms)
    return norms


def _file_key(array: np.ndarray) -> tuple | None:
    name = getattr(array, "filename", None)
    if name is None:
        return None
    info = os.stat(name)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def write_vector_list(
    folder: Path, files: list[tuple[Path, Path, str, int, list[int]]], dim: int, checked_as_read: bool = False
) -> str:
    """Write VECTOR_LIST into `folder`: for each piece (its vectors, its rows.json, that file's sha256, its row
    count, its removed rows) the files behind any link, with their sizes; `checked_as_read`: its vectors and images
    were not read when it was checked, and are checked row by row as they are read. Returns the name written."""
    entries = [
        {
            "path": os.path.realpath(vectors),
            "size": os.path.getsize(vectors),
            "rows_path": os.path.realpath(rows_file),
            "rows_sha256": digest,
            "rows": rows,
            "removed": removed,
            "checked_as_read": checked_as_read,
        }
        for vectors, rows_file, digest, rows, removed in files
    ]
    listing = {"format_version": _FORMAT_VERSION, "dim": dim, "pieces": entries}
    (folder / VECTOR_LIST).write_text(json.dumps(listing, indent=1), encoding="utf-8")
    return VECTOR_LIST


def list_vector_files(folder: Path) -> list[dict]:
    """The entries of `folder`'s VECTOR_LIST; a BundleFormatError if it cannot be read."""
    path = Path(folder) / VECTOR_LIST
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
        if listing["format_version"] != _FORMAT_VERSION:
            raise ValueError(f"format version {listing['format_version']!r}")
        entries = listing["pieces"]
        for entry in entries:
            names = (entry["path"], entry["rows_path"], entry["rows_sha256"])
            if not (all(isinstance(name, str) for name in names) and type(entry["size"]) is type(entry["rows"]) is int):
                raise ValueError("an entry without its files, size and rows")
            removed = entry["removed"]
            if not all(type(row) is int for row in removed) or removed != sorted(set(removed)):
                raise ValueError("removed rows that are not sorted row numbers")
            if removed and not 0 <= removed[0] <= removed[-1] < entry["rows"]:
                raise ValueError("removed rows out of range")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleFormatError(
            f"{path} could not be read ({exc}); start with the Hub reachable to fetch again."
        ) from exc


def open_stacked(entries: list[dict], dim: int) -> StackedVectors:
    """The vectors VECTOR_LIST names (its `entries`, as list_vector_files reads them), memory-mapped. Their values
    were checked against the head when their piece was (pieces.assemble), or are checked as read (check_as_read);
    here each file is checked to be there with its size, dtype and shape.

    Raises:
        BundleError: a file missing, changed in size, or not a (rows, dim) float32 array.
    """
    parts = []
    for entry in entries:
        array = map_rows(entry["path"], entry["size"], (entry["rows"], dim), "start with the Hub reachable.")
        parts.append((array, np.setdiff1d(np.arange(entry["rows"]), np.array(entry["removed"], dtype=np.int64))))
    return StackedVectors(parts)


def map_rows(path: str, size: int, shape: tuple, again: str, random: bool = False) -> np.ndarray:
    """The float32 array of `shape` in the .npy file `path`, memory-mapped (`random`: its rows are read a few at a
    time, so no readahead around them), checked to still have `size` bytes, that dtype and that shape.

    Raises:
        BundleError: the file missing, changed in size or not such an array; the message ends with `again`.
    """
    try:
        if os.path.getsize(path) != size:
            raise BundleMissingFile(f"{path} has changed size since it was checked; {again}")
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except OSError as exc:
        raise BundleMissingFile(f"{path} is missing ({exc}); {again}") from exc
    except (ValueError, EOFError) as exc:
        raise BundleFormatError(f"{path} is not a plain .npy array ({exc}); {again}") from exc
    if array.dtype != np.float32 or array.shape != shape:
        raise BundleShapeError(f"{path} holds {array.dtype} {array.shape}, expected float32 {shape}; {again}")
    pages = getattr(array, "_mmap", None)  # (numpy.memmap's mmap object)
    if random and pages is not None and hasattr(mmap, "MADV_RANDOM"):
        pages.madvise(mmap.MADV_RANDOM)
    return array
