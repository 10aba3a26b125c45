"""Where the approximate index's codes (each row's reduced vector: fashion_search.approximate) are read from, and how
a search scores them. A revision in pieces (fashion_search.pieces) holds them in its pieces' files, in each piece's
row order; a scan is fastest over one file in the index's list order (each list's rows contiguous), so that file is
written once the index has answered and then shared by the revisions that follow:

    InList(array, norms, layout)      one (n, d') array in list order: a bundle's ivf_codes.npy, or a revision's codes
                                      put together (ASSEMBLED)
    InPieces(files, layout)           the pieces' files where they lie: each read gathers its rows from them (a start
                                      on a mounted catalogue reads only the lists its first searches probe)
    OnBase(base, files, layout)       an earlier revision's codes put together (the same file, linked: one set of
                                      pages), less its rows no longer live, plus the rows not in it, new pieces'
                                      rows, read from their files: a swap reads only the new pieces' codes

Each scores the rows at positions of the index's list order (`score`) or every row of some lists (`score_lists`).
A revision's codes are put together (`assemble`) after its first answer when they are read in pieces, or when
its base has come to lack more than REASSEMBLE_SHARE of its rows; each piece's file not checked before is hashed
against the head as it is read (a mounted catalogue's: BundleHashMismatch if it does not match).

Files, in a revision's folder:

    ivf_codes.json            the pieces' codes files: path, size, sha256, whether checked (CODES_LIST)
    ivf_codes.assembled.*     the codes put together: .npy (n, d') in list order; .npz each position's piece and
                              row, the lists' offsets, the rows' squared norms; .json the pieces' codes sha256
    ivf_base.*                the same three files of an earlier revision, linked (BASE)
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_search.bundle import BundleError, BundleHashMismatch, BundleShapeError
from fashion_search.files import link_or_copy, sha256_file, write_atomic
from fashion_search.vectors import StackedVectors, map_rows

CODES_LIST = "ivf_codes.json"
ASSEMBLED = "ivf_codes.assembled"
BASE = "ivf_base"
REASSEMBLE_SHARE = 0.05  # rows not in the base, and its rows no longer live: past this share, put together anew
MIN_BASE_SHARE = 0.5  # an earlier revision's codes are a base when they hold at least this share of the rows
_AGAIN = "Push the catalogue again, or serve it with --search exact."


@dataclass(frozen=True)
class Layout:
    """The index's list order over a revision's rows."""

    order: np.ndarray  # (n,) list order -> row
    position: np.ndarray  # (n,) row -> list order
    offsets: np.ndarray  # (lists + 1,) list i's positions: offsets[i]:offsets[i + 1]


class InList:
    """One (n, d') array in list order, and its rows' squared norms."""

    def __init__(self, array: np.ndarray, norms: np.ndarray, layout: Layout):
        self.array = np.asarray(array)  # (a memory-mapped file as a plain array: no numpy.memmap made per slice)
        self.norms, self.layout = norms, layout

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[positions])

    def score(self, positions: np.ndarray, reduced: np.ndarray) -> np.ndarray:
        return self.norms[positions] - 2 * (self.array[positions] @ reduced)

    def score_lists(self, probed: np.ndarray, reduced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets = self.layout.offsets
        positions = ranges(offsets[probed], offsets[probed + 1])
        products = [self.array[offsets[i] : offsets[i + 1]] @ reduced for i in probed]  # contiguous: in place
        return positions, self.norms[positions] - 2 * np.concatenate(products)


class InPieces:
    """The rows' codes in the pieces' files: `files`, the files of the pieces `numbers` (of the revision's), each
    with its live rows as the revision's vectors; `starts`, each one's first row in the revision."""

    def __init__(self, files: StackedVectors, layout: Layout, numbers: np.ndarray, starts: np.ndarray):
        self.files, self.layout, self.numbers, self.starts = files, layout, numbers, starts
        self.to_files = np.full(len(layout.order), -1, dtype=np.int64)  # a row -> its row in `files`
        for start, stacked, (_, live) in zip(starts, files.starts, files.parts) if files else ():
            self.to_files[start : start + len(live)] = stacked + np.arange(len(live))

    def take(self, positions: np.ndarray) -> np.ndarray:
        return self._rows(self.layout.order[positions])

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """The codes of these rows (each in a piece of `files`), in that order."""
        rows = self.to_files[rows]
        ascending = np.argsort(rows, kind="stable")  # each file read front to back
        out = np.empty((len(rows), self.dims), dtype=np.float32)
        if len(rows):
            out[ascending] = self.files.gather(rows[ascending])
        return out

    @property
    def dims(self) -> int:
        return self.files.shape[1]

    def score(self, positions: np.ndarray, reduced: np.ndarray) -> np.ndarray:
        block = self.take(positions)
        return np.einsum("ij,ij->i", block, block) - 2 * (block @ reduced)

    def score_lists(self, probed: np.ndarray, reduced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets = self.layout.offsets
        positions = ranges(offsets[probed], offsets[probed + 1])
        return positions, self.score(positions, reduced)


class OnBase(InPieces):
    """An earlier revision's codes in list order (the base: `array`, its lists' `base_offsets`, `norms`, and each of
    its positions' row in this revision, -1 for a row no longer live), and this revision's other rows in the files
    of the pieces that hold them (InPieces: the other pieces' files are not opened)."""

    def __init__(self, base: tuple, row_base: np.ndarray, pieces: tuple, lists: np.ndarray):
        """`base`: (array, base_offsets, norms, base_rows); `row_base`: each row's base position, -1 for none;
        `pieces`: InPieces' arguments, for the rows not in the base."""
        super().__init__(*pieces)
        self.array, self.base_offsets, self.norms, self.base_rows = base
        self.row_base = row_base
        rest = np.flatnonzero(row_base < 0)
        by_list = np.argsort(lists[rest], kind="stable")
        self.rest = rest[by_list]  # rows not in the base, in list order
        self.rest_offsets = np.searchsorted(lists[rest][by_list], np.arange(len(self.layout.offsets)))
        self.stale = len(rest) + int((self.base_rows < 0).sum())  # rows read from pieces, and base rows skipped

    @property
    def dims(self) -> int:
        return self.array.shape[1]

    def take(self, positions: np.ndarray) -> np.ndarray:
        return self._take(positions)[0]

    def _take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the codes at these positions, each one's base position or -1: read from its piece's file)."""
        rows = self.layout.order[positions]
        at = self.row_base[rows]
        out = np.empty((len(rows), self.dims), dtype=np.float32)
        held = at >= 0
        out[held] = self.array[at[held]]
        out[~held] = self._rows(rows[~held])
        return out, at

    def score(self, positions: np.ndarray, reduced: np.ndarray) -> np.ndarray:
        block, at = self._take(positions)
        squared = np.where(at >= 0, self.norms[np.maximum(at, 0)], np.einsum("ij,ij->i", block, block))
        return squared - 2 * (block @ reduced)

    def score_lists(self, probed: np.ndarray, reduced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets = self.base_offsets
        in_base = probed[probed < len(offsets) - 1]  # (lists made since the base hold no row of it)
        places = ranges(offsets[in_base], offsets[in_base + 1])
        products = [self.array[offsets[i] : offsets[i + 1]] @ reduced for i in in_base]
        rows = self.base_rows[places]
        live = rows >= 0
        scores = [(self.norms[places] - 2 * np.concatenate(products or [np.empty(0, np.float32)]))[live]]
        positions = [self.layout.position[rows[live]]]
        rest = np.sort(self.rest[ranges(self.rest_offsets[probed], self.rest_offsets[probed + 1])])
        if len(rest):
            block = self.files.gather(self.to_files[rest])
            scores.append(np.einsum("ij,ij->i", block, block) - 2 * (block @ reduced))
            positions.append(self.layout.position[rest])
        return np.concatenate(positions), np.concatenate(scores)


def open_codes(root: Path, files: StackedVectors | None, layout: Layout, lists: np.ndarray, dims: int):
    """The codes of the revision in `root` (its CODES_LIST; `files`: the revision's vectors, whose pieces and live
    rows the codes files share): put together already (ASSEMBLED), on a base (BASE), or in the pieces' files."""
    n = len(layout.order)
    assembled = _read_assembled(root, ASSEMBLED, dims)
    if assembled is not None and len(assembled[0]) == n:  # (every file checked as it was read)
        return InList(assembled[0], assembled[2], layout)
    entries = read_list(root)
    if len(entries) != len(files.parts):
        raise BundleShapeError(f"{root / CODES_LIST} lists {len(entries)} pieces, the vectors {len(files.parts)}.")
    base = _read_assembled(root, BASE, dims)
    if base is None:
        numbers = np.arange(len(entries))
        return InPieces(_open_files(entries, files, numbers, dims), layout, numbers, files.starts[:-1])
    array, meta, norms, shas = base
    base_rows = _base_rows(meta["rows"], shas, entries, files)
    row_base = np.full(n, -1, dtype=np.int64)  # row -> base position, -1: not in it
    held = np.flatnonzero(base_rows >= 0)
    row_base[base_rows[held]] = held
    numbers = np.unique(np.searchsorted(files.starts, np.flatnonzero(row_base < 0), side="right") - 1)
    pieces = (_open_files(entries, files, numbers, dims), layout, numbers, files.starts[numbers])
    return OnBase((array, meta["offsets"], norms, base_rows), row_base, pieces, lists)


def read_list(root: Path) -> list[dict]:
    try:
        entries = json.loads((root / CODES_LIST).read_text(encoding="utf-8"))["pieces"]
        if not all(isinstance(entry["path"], str) and isinstance(entry["sha256"], str) for entry in entries):
            raise ValueError("an entry without its file")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleShapeError(
            f"{root / CODES_LIST}: the approximate index's rows cannot be read ({exc}). {_AGAIN}"
        ) from exc


def _open_files(entries: list[dict], files: StackedVectors, numbers: np.ndarray, dims: int) -> StackedVectors:
    """The codes files of the pieces `numbers`, memory-mapped with the live rows of the vectors' pieces; each there
    with its size and shape."""
    parts = []
    for number in numbers:
        entry, (vectors, live) = entries[number], files.parts[number]
        shape = (len(vectors), dims)
        parts.append((map_rows(entry["path"], entry["size"], shape, _AGAIN.lower(), random=True), live))
    return StackedVectors(parts) if parts else None


def _read_assembled(root: Path, name: str, dims: int) -> tuple[np.ndarray, dict, np.ndarray, list[str]] | None:
    """(the codes in list order, {"rows", "offsets"}, their squared norms, the pieces' codes sha256) of the codes put
    together in `root` under `name`, or None if there are none there (or not all three files)."""
    try:
        array = np.load(root / f"{name}.npy", allow_pickle=False, mmap_mode="r")
        with np.load(root / f"{name}.npz", allow_pickle=False) as stored:
            meta = {"rows": stored["rows"], "offsets": stored["offsets"]}
            norms = stored["norms"]
        shas = json.loads((root / f"{name}.json").read_text(encoding="utf-8"))["pieces"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if array.dtype != np.float32 or array.shape[1:] != (dims,) or not len(array) == len(meta["rows"]) == len(norms):
        return None
    return array, meta, norms, shas


def _base_rows(packed: np.ndarray, shas: list[str], entries: list[dict], pieces: StackedVectors) -> np.ndarray:
    """Each base position's row in this revision (-1: no longer live). `packed`: each base position's piece (its
    number in `shas`) << 32 | its row in that piece; `pieces`: this revision's vectors (their pieces' rows)."""
    at = {entry["sha256"]: number for number, entry in enumerate(entries)}  # a codes file's sha256 -> its piece here
    sizes = [0] * len(shas)
    lookups = []
    for number, sha in enumerate(shas):
        mine = at.get(sha)
        if mine is None:
            lookups.append(np.full(0, -1, dtype=np.int64))
            continue
        array, live = pieces.parts[mine]
        table = np.full(len(array), -1, dtype=np.int64)
        table[live] = pieces.starts[mine] + np.arange(len(live))
        sizes[number] = len(array)
        lookups.append(table)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    table = np.concatenate([*lookups, np.full(1, -1, dtype=np.int64)])  # the last: for a piece no longer here
    piece, row = packed >> 32, packed & 0xFFFFFFFF
    sized = np.asarray(sizes, dtype=np.int64)[piece]
    return table[np.where(row < sized, starts[piece] + row, len(table) - 1)]


def due(codes) -> bool:
    """Whether `codes` are to be put together: read in pieces, or on a base lacking more than REASSEMBLE_SHARE."""
    if isinstance(codes, OnBase):
        return codes.stale > REASSEMBLE_SHARE * len(codes.layout.order)
    return isinstance(codes, InPieces)


def check_new(root: Path, codes) -> None:
    """Hash each codes file the revision reads from its pieces (not from a base) not checked before (a mounted
    catalogue's) against the head: BundleHashMismatch if one does not match."""
    entries = read_list(root)
    for number in codes.numbers:
        entry = entries[number]
        if not entry.get("checked") and sha256_file(entry["path"]) != entry["sha256"]:
            raise BundleHashMismatch(
                f"{entry['path']} does not match its sha256 in the catalogue's head: the approximate index's rows "
                f"were changed or damaged. {_AGAIN}"
            )


def assemble(root: Path, codes, pieces: StackedVectors, block: int = 65536) -> InList:
    """Write the codes of the revision in `root` (`pieces`: its vectors, whose pieces' rows they are) in list order
    (ASSEMBLED: from the base where it holds them, the rest from the pieces' files, each checked first by
    `check_new`); them, as InList."""
    check_new(root, codes)
    layout, files = codes.layout, codes.files
    n, dims = len(layout.order), codes.dims
    tag = f"{os.getpid()}.{threading.get_ident()}.partial"
    partial = {suffix: root / f".{ASSEMBLED}.{suffix}.{tag}" for suffix in ("npy", "npz")}
    try:
        out = np.lib.format.open_memmap(partial["npy"], mode="w+", dtype=np.float32, shape=(n, dims))
        held = np.zeros(n, dtype=bool)
        if isinstance(codes, OnBase):
            for start in range(0, len(codes.base_rows), block):  # the base's rows, front to back
                rows = codes.base_rows[start : start + block]
                live = rows >= 0
                out[layout.position[rows[live]]] = codes.array[start : start + block][live]
                held[rows[live]] = True
        for (array, live), start in zip(files.parts if files else [], codes.starts):
            rows = start + np.arange(len(live))
            wanted = ~held[rows]
            if wanted.any():
                out[layout.position[rows[wanted]]] = array[live[wanted]]
        norms = squared_norms(out, block)
        out.flush()
        del out
        piece_of = np.searchsorted(pieces.starts, layout.order, side="right") - 1
        local = np.concatenate([live for _, live in pieces.parts])[layout.order]
        packed = (piece_of.astype(np.int64) << 32) | local
        with open(partial["npz"], "wb") as handle:
            np.savez(handle, rows=packed, offsets=layout.offsets.astype(np.int64), norms=norms)
        shas = [entry["sha256"] for entry in read_list(root)]
        os.replace(partial["npz"], root / f"{ASSEMBLED}.npz")
        write_atomic(root / f"{ASSEMBLED}.json", json.dumps({"pieces": shas}).encode())
        os.replace(partial["npy"], root / f"{ASSEMBLED}.npy")  # the last: the three are complete
    finally:
        for path in partial.values():
            path.unlink(missing_ok=True)
    return InList(np.load(root / f"{ASSEMBLED}.npy", mmap_mode="r"), norms, layout)


def link_base(folder: Path, revisions: list[Path], shas: list[str], rows: list[int]) -> bool:
    """Link into `folder` (a revision being made) as its BASE the codes put together that hold most of its rows
    (`shas`: its pieces' codes sha256, `rows`: their live rows) among those of `revisions` (each one's own, or its
    base), if they hold at least MIN_BASE_SHARE of them. Returns whether some were linked."""
    best, most = None, 0
    for revision in revisions:
        for name in (ASSEMBLED, BASE):  # its own, or the base it was made on (one that did not write its own)
            try:
                held = set(json.loads((revision / f"{name}.json").read_text(encoding="utf-8"))["pieces"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            covered = sum(count for sha, count in zip(shas, rows) if sha in held)
            if covered > most and all((revision / f"{name}.{suffix}").is_file() for suffix in ("npz", "npy")):
                best, most = revision / name, covered
    if best is None or most < MIN_BASE_SHARE * sum(rows):
        return False
    try:
        for suffix in ("json", "npz", "npy"):  # (hard links: the same file, one set of pages for both revisions)
            link_or_copy(best.with_name(f"{best.name}.{suffix}"), folder / f"{BASE}.{suffix}")
    except (OSError, BundleError):
        for suffix in ("json", "npz", "npy"):
            (folder / f"{BASE}.{suffix}").unlink(missing_ok=True)
        return False
    return True


def squared_norms(codes: np.ndarray, block: int = 65536) -> np.ndarray:
    """(n,) float32: each row's squared norm, in blocks (a memory-mapped file is read once, not held)."""
    out = np.empty(len(codes), dtype=np.float32)
    for start in range(0, len(codes), block):
        rows = np.asarray(codes[start : start + block])
        out[start : start + block] = np.einsum("ij,ij->i", rows, rows)
    return out


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of arange(start, end) for each pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shifts = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + shifts
