"""A catalogue on the Hub as pieces, so that a change sends and downloads in proportion to its size.

A revision is a small head file naming immutable pieces and the products removed from them since:

    catalogue.json                  the head: model, dimensions, count; per piece its files' sha256 and the rows
                                    removed from it; the approximate index's shared files
    pieces/<id>/images.tar          the piece's products, each an image and a JSON (file name, metadata): WebDataset
    pieces/<id>/vectors.npy         (rows, dim) float32 unit rows, in the tar's order
    pieces/<id>/rows.json           the same rows' file names, image, source and vector digests, and metadata
    pieces/<id>/lists-<hex>.npy     with the approximate index: each row's list (int32), and
    pieces/<id>/codes-<hex>.npy     its reduced vector (float32, rows in the piece's order)
    index/<hex>/ivf.json, ivf_mean.npy, ivf_components.npy, ivf_centroids.npy     the index's shared arrays

A piece's files never change once pushed and its id is its content's digest (LanceDB's fragments and deletion files,
Milvus's segments and delete logs). A push (`plan_push`) keeps every product that is unchanged where it is, records
the sold-out ones in the head, and writes the new and changed ones into new pieces; the app (`assemble`) downloads
and checks only the pieces it has not checked before and puts the revision together on its own disk.

Compaction, at each push: a piece with more than REWRITE_SHARE of its rows removed is rewritten (its live rows go into
the new pieces), and when more than SMALL_PIECES pieces hold fewer than SMALL_ROWS live rows, those are merged (their
rows go into the new pieces too). So every piece but SMALL_PIECES holds at least 768 live rows, the head names at
most count / 768 + SMALL_PIECES pieces, and `pieces/` stays far below the Hub's 10,000 entries a folder. A file the
new head no longer names is deleted by the push after the next one: an app still reading the previous revision
never loses a file under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import weakref
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fashion_search import __version__, approximate
from fashion_search import codes as index_codes
from fashion_search.bundle import (
    IMAGES,
    INDEX_FILES,
    MANIFEST,
    UNIT_TOLERANCE,
    VECTOR_LIST,
    Bundle,
    BundleCountMismatch,
    BundleError,
    BundleFormatError,
    BundleHashMismatch,
    BundleMissingFile,
    BundleShapeError,
    BundleValueError,
    is_relative_name,
    read_manifest,
)
from fashion_search.files import link_or_copy, sha256_file, write_atomic
from fashion_search.shards import SPAN_DTYPE, Shard, index_shards, member_name, write_shard
from fashion_search.vectors import list_vector_files, open_stacked, write_vector_list

HEAD = "catalogue.json"
PIECES = "pieces"
INDEX = "index"
HEAD_FORMAT = 2
TAR, VECTORS, ROWS = "images.tar", "vectors.npy", "rows.json"
PIECE_ROWS = 8192  # new products are cut into pieces of at most this many rows (44k products: 6 pieces)
SMALL_ROWS = 1024  # a piece with fewer live rows is small
SMALL_PIECES = 8  # more small pieces than this after a push: they are merged
REWRITE_SHARE = 0.25  # a piece with more than this share of its rows removed is rewritten
INDEX_SHARED = INDEX_FILES[:4]  # ivf.json, mean, components, centroids: one copy for the revision
_PIECE_FILE = re.compile(rf"{PIECES}/([0-9a-f]{{20}})/({TAR}|{VECTORS}|{ROWS}|(lists|codes)-[0-9a-f]{{16}}\.npy)")
_INDEX_FILE = re.compile(rf"{INDEX}/[0-9a-f]{{16}}/({'|'.join(re.escape(name) for name in INDEX_SHARED)})")
_CHECKED = "checked.json"  # in a piece's check folder: the files it was checked as
_shared: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # (rows.json's file, rows) -> PieceRows
_shared_lock = threading.Lock()
_SPANS = "spans.npy"


@dataclass(frozen=True)
class Piece:
    id: str  # 20 hex digits of the digest of its files
    rows: int  # rows written, removed ones included
    files: dict[str, str]  # repo path -> sha256: images.tar, vectors.npy, rows.json, and the index's lists and codes
    removed: tuple[int, ...] = ()  # rows removed since it was written, sorted

    def path(self, name: str) -> str:
        return f"{PIECES}/{self.id}/{name}"

    @property
    def index_files(self) -> tuple[str, str] | None:
        """(lists, codes) paths of the approximate index's rows, or None."""
        found = sorted(path for path in self.files if path.rsplit("/", 1)[1].startswith(("lists-", "codes-")))
        return (found[1], found[0]) if len(found) == 2 else None

    @property
    def live(self) -> np.ndarray:
        """The rows not removed, in order."""
        return np.setdiff1d(np.arange(self.rows), np.array(self.removed, dtype=np.int64))

    @property
    def live_count(self) -> int:
        return self.rows - len(self.removed)

    def entry(self) -> dict:
        return {"id": self.id, "rows": self.rows, "files": self.files, "removed": list(self.removed)}


@dataclass(frozen=True)
class Head:
    model: dict
    preprocessing: str
    dim: int
    pieces: tuple[Piece, ...]
    index: dict[str, str] = field(default_factory=dict)  # repo path -> sha256 of the index's shared files, or {}
    created: str = ""
    project_version: str = ""

    @property
    def count(self) -> int:
        return sum(piece.live_count for piece in self.pieces)

    def files(self) -> dict[str, str]:
        """Every file the revision needs besides the head: repo path -> sha256."""
        found = {path: self.index[path] for path in sorted(self.index)}
        for piece in self.pieces:
            found.update((path, piece.files[path]) for path in sorted(piece.files))
        return found

    def to_bytes(self) -> bytes:
        value = {
            "format_version": HEAD_FORMAT,
            "model": self.model,
            "preprocessing": self.preprocessing,
            "dim": self.dim,
            "dtype": "float32",
            "count": self.count,
            "pieces": [piece.entry() for piece in self.pieces],
            "index": self.index,
            "created": self.created,
            "project_version": self.project_version,
        }
        return json.dumps(value, indent=1, sort_keys=True).encode()

    def compatible(self, bundle: Bundle) -> bool:
        """Whether `bundle`'s vectors can join this head's pieces: the same model, preprocessing and dimensions."""
        manifest = bundle.manifest
        return (self.model, self.preprocessing, self.dim) == (
            manifest["model"],
            manifest["preprocessing"],
            manifest["dim"],
        )


def read_head(path: Path, where: str) -> Head:
    """The head file at `path` (of revision `where`), checked: format, types, and every path a piece's or the index's;
    a BundleError naming what is wrong otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleMissingFile(f"The {HEAD} of {where} cannot be read ({exc}).") from exc
    return parse_head(data, where)


def parse_head(data: bytes, where: str) -> Head:
    """read_head's, from the head file's bytes."""
    try:
        value = json.loads(data.decode("utf-8"))
        if value["format_version"] != HEAD_FORMAT:
            raise BundleFormatError(
                f"The {HEAD} of {where} has format version {value['format_version']!r}; this version of the app "
                f"reads {HEAD_FORMAT}. Update the app, or push the catalogue again with this version."
            )
        if value.get("dtype") != "float32" or not isinstance(value["model"], dict):
            raise ValueError("dtype or model")
        pieces = tuple(_piece(entry) for entry in value["pieces"])
        index = value.get("index") or {}
        head = Head(
            value["model"],
            str(value["preprocessing"]),
            int(value["dim"]),
            pieces,
            {str(path): str(digest) for path, digest in index.items()},
            str(value.get("created", "")),
            str(value.get("project_version", "")),
        )
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BundleFormatError(f"The {HEAD} of {where} cannot be read ({exc!r}).") from exc
    for piece in head.pieces:
        bad = [path for path in piece.files if (m := _PIECE_FILE.fullmatch(path)) is None or m.group(1) != piece.id]
        if bad or not {piece.path(TAR), piece.path(VECTORS), piece.path(ROWS)} <= set(piece.files):
            raise BundleFormatError(f"The {HEAD} of {where} names files that are not piece {piece.id}'s: {bad}.")
        if head.index and piece.index_files is None:
            raise BundleFormatError(f"The {HEAD} of {where} has an index, but piece {piece.id} has no index rows.")
    if head.index and set(path.rsplit("/", 1)[1] for path in head.index) != set(INDEX_SHARED):
        raise BundleFormatError(f"The {HEAD} of {where} names only part of the approximate index.")
    if any(_INDEX_FILE.fullmatch(path) is None for path in head.index):
        raise BundleFormatError(f"The {HEAD} of {where} names index files outside {INDEX}/.")
    if len({piece.id for piece in head.pieces}) != len(head.pieces):
        raise BundleFormatError(f"The {HEAD} of {where} names a piece twice.")
    return head


def _piece(entry: dict) -> Piece:
    rows, removed = int(entry["rows"]), [int(row) for row in entry["removed"]]
    if removed != sorted(set(removed)) or (removed and not 0 <= removed[0] <= removed[-1] < rows):
        raise ValueError(f"piece {entry['id']}: removed rows out of order or range")
    files = {str(path): str(digest) for path, digest in entry["files"].items()}
    return Piece(str(entry["id"]), rows, files, tuple(removed))


@dataclass(frozen=True)
class PieceRows:
    """A piece's rows.json: what each row is, in the order of its vectors and its tar."""

    filenames: list[str]
    images: list[str]  # sha256 of each image
    sources: list[str]  # sha256 of each source image
    vectors: list[str]  # 16 hex digits of the sha256 of each vector's bytes
    metadata: list[dict] | None
    # [offset, size] of each image's bytes in the piece's tar (pieces pushed since the mount: a start need not read
    # the tar to find them); None in earlier pieces
    image_spans: list[list[int]] | None = None

    def key(self, row: int) -> tuple:
        metadata = self.metadata[row] if self.metadata is not None else None
        return _key(self.images[row], self.sources[row], self.vectors[row], metadata)

    def to_bytes(self) -> bytes:
        value = {
            "filenames": self.filenames,
            "images": self.images,
            "sources": self.sources,
            "vectors": self.vectors,
            "metadata": self.metadata,
        }
        if self.image_spans is not None:
            value["image_spans"] = self.image_spans
        return json.dumps(value, ensure_ascii=False, sort_keys=True).encode()


def read_rows(path: Path, rows: int, where: str) -> PieceRows:
    """A piece's rows.json, checked: `rows` of each, strings, relative file names, objects; BundleFormatError else."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
        found = PieceRows(value["filenames"], value["images"], value["sources"], value["vectors"], value["metadata"])
        lists = [found.filenames, found.images, found.sources, found.vectors]
        if not all(isinstance(items, list) and len(items) == rows for items in lists):
            raise ValueError(f"not {rows} rows")
        if not all(isinstance(item, str) for items in lists for item in items):
            raise ValueError("not strings")
        if found.metadata is not None:
            if not isinstance(found.metadata, list) or len(found.metadata) != rows:
                raise ValueError(f"not {rows} metadata rows")
            if not all(isinstance(row, dict) for row in found.metadata):
                raise ValueError("metadata rows that are not objects")
            found = replace(found, metadata=[_interned(row) for row in found.metadata])
        spans = value.get("image_spans")
        if spans is not None:
            if not isinstance(spans, list) or len(spans) != rows:
                raise ValueError(f"not {rows} image spans")
            if not all(
                isinstance(span, list) and len(span) == 2 and all(type(n) is int and n >= 0 for n in span)
                for span in spans
            ):
                raise ValueError("image spans that are not [offset, size]")
            found = replace(found, image_spans=spans)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleFormatError(f"{where} cannot be read ({exc!r}).") from exc
    for name in found.filenames:
        if not is_relative_name(name):
            raise BundleFormatError(f"{where} holds {name!r}: file names must be relative.")
    return found


# ---------------------------------------------------------------- the push: what stays, what goes, what is new


@dataclass(frozen=True)
class Plan:
    kept: list[Piece]  # pieces of the head that stay, with the rows removed from them now
    kept_rows: list[np.ndarray]  # for each kept piece, the bundle row of each of its rows (-1: removed)
    new: list[np.ndarray]  # for each new piece, the bundle rows it holds (in file-name order)
    reindex: bool  # the kept pieces need index rows made anew (the index was trained again, or added or dropped)


def plan_push(
    bundle: Bundle, head: Head | None, remote: dict[str, PieceRows], index: approximate.IvfIndexData | None
) -> Plan:
    """What a push of `bundle` over `head` (None: a repo without pieces) keeps, removes and writes anew.

    A product stays in its piece when that piece holds it, live, with the same image, source and metadata;
    every other product of the bundle goes into a new piece, and every live row of a piece that the bundle does
    not hold as it is there is removed. Then compaction (the module's docstring).

    Args:
        remote: each head piece's rows (rows.json).
        index: the bundle's approximate index, if it has one.
    """
    files = bundle.manifest["files"]
    metadata = bundle.metadata or [None] * len(bundle.filenames)
    rows_of = {name: row for row, name in enumerate(bundle.filenames)}
    placed = np.zeros(len(bundle.filenames), dtype=bool)
    usable = head is not None and head.compatible(bundle)
    kept = []  # (a head piece that stays, the bundle row of each of its rows)
    for piece in head.pieces if usable else ():
        rows, removed = remote[piece.id], set(piece.removed)
        here = np.full(piece.rows, -1, dtype=np.int64)
        for row, name in enumerate(rows.filenames):
            mine = rows_of.get(name)
            if row in removed or mine is None or placed[mine]:
                removed.add(row)
            elif _key(files[f"{IMAGES}/{name}"], bundle.sources[mine], vector_digest(bundle, mine), metadata[mine]) != (
                rows.key(row)
            ):
                removed.add(row)
            else:
                placed[mine] = True
                here[row] = mine
        piece = replace(piece, removed=tuple(sorted(removed)))
        if piece.live_count == 0 or len(piece.removed) > REWRITE_SHARE * piece.rows:  # rewritten
            placed[here[here >= 0]] = False
        else:
            kept.append((piece, here))
    fresh = int((~placed).sum())
    small = [piece for piece, _ in kept if piece.live_count < SMALL_ROWS]
    new_small = 1 if fresh and fresh % PIECE_ROWS < SMALL_ROWS else 0  # the last new piece, if it is small
    if len(small) + new_small > SMALL_PIECES:
        for piece, here in kept:  # merged
            if piece.live_count < SMALL_ROWS:
                placed[here[here >= 0]] = False
        kept = [(piece, here) for piece, here in kept if piece.live_count >= SMALL_ROWS]
    todo = np.array(sorted(np.flatnonzero(~placed), key=lambda row: bundle.filenames[row]), dtype=np.int64)
    new = list(np.array_split(todo, -(-len(todo) // PIECE_ROWS))) if len(todo) else []
    reindex = index_key(index) != _head_index_key(head.index if usable else {})
    return Plan([piece for piece, _ in kept], [here for _, here in kept], new, reindex)


def index_key(index: approximate.IvfIndexData | None) -> str:
    """What the index rows of a piece depend on: the PCA (mean and axes); "" without an index. Lists added to an
    index since (approximate.update) keep the old ones' numbers, so rows assigned before stay right."""
    if index is None:
        return ""
    return hashlib.sha256(index.mean.tobytes() + index.components.tobytes()).hexdigest()[:16]


def _head_index_key(index_files: dict[str, str]) -> str:
    info = next((path for path in index_files if path.endswith("/ivf.json")), None)
    return info.split("/")[1] if info else ""


def write_piece(
    bundle: Bundle, rows: np.ndarray, index: approximate.ApproximateIndex | None, folder: Path
) -> tuple[Piece, dict[str, Path]]:
    """Write the bundle's `rows` as a piece into `folder`; (the piece, repo path -> local file)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [bundle.filenames[row] for row in rows]
    files = bundle.manifest["files"]
    metadata = [bundle.metadata[row] for row in rows] if bundle.metadata is not None else None
    documents = [
        json.dumps({**(metadata[i] if metadata else {}), "filename": name}, ensure_ascii=False, sort_keys=True).encode()
        for i, name in enumerate(names)
    ]
    for name in names:
        member_name(name)  # refuse a name that cannot be packed
    local = {
        TAR: write_shard(Shard(TAR, names, documents), bundle.images_dir, folder / TAR),
        VECTORS: _save(folder / VECTORS, np.ascontiguousarray(bundle.embeddings[rows], dtype=np.float32)),
        ROWS: folder / ROWS,
    }
    images = [files[f"{IMAGES}/{name}"] for name in names]
    sources = [bundle.sources[row] for row in rows]
    vectors = [vector_digest(bundle, row) for row in rows]
    spans = index_shards([local[TAR]], {f"{IMAGES}/{name}": digest for name, digest in zip(names, images)}, names)
    image_spans = [[int(offset), int(size)] for offset, size in zip(spans["offset"], spans["size"])]
    (folder / ROWS).write_bytes(PieceRows(names, images, sources, vectors, metadata, image_spans).to_bytes())
    digests = {name: sha256_file(path) for name, path in local.items()}
    piece_id = hashlib.sha256("".join(digests[name] for name in (TAR, VECTORS, ROWS)).encode()).hexdigest()[:20]
    piece = Piece(piece_id, len(rows), {})
    paths = {piece.path(name): path for name, path in local.items()}
    if index is not None:
        paths.update(index_rows(piece, index, rows, folder))
    return replace(piece, files={path: sha256_file(local_path) for path, local_path in paths.items()}), paths


def index_rows(piece: Piece, index: approximate.ApproximateIndex, rows: np.ndarray, folder: Path) -> dict[str, Path]:
    """The index's lists and codes of the bundle's `rows` (a piece's, in its order; -1: a removed row, zeros) written
    into `folder`; repo path -> local file."""
    folder.mkdir(parents=True, exist_ok=True)
    present = rows >= 0
    lists = np.zeros(len(rows), dtype=np.int32)
    codes = np.zeros((len(rows), index.data.codes.shape[1]), dtype=np.float32)
    lists[present] = index.data.lists[rows[present]]
    codes[present] = index.data.codes[index.position[rows[present]]]
    key = index_key(index.data)
    out = {}
    for kind, array in (("lists", lists), ("codes", codes)):
        local = _save(folder / f"{kind}-{key}.npy", array)
        out[piece.path(f"{kind}-{sha256_file(local)[:16]}.npy")] = local
    return out


def index_files(index: approximate.IvfIndexData, root: Path) -> dict[str, Path]:
    """The index's shared files of the bundle at `root`, under index/<key>/; repo path -> local file."""
    key = index_key(index)
    return {f"{INDEX}/{key}/{name}": root / name for name in INDEX_SHARED}


def new_head(bundle: Bundle, pieces: list[Piece], index: dict[str, str]) -> Head:
    manifest = bundle.manifest
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return Head(
        manifest["model"], manifest["preprocessing"], manifest["dim"], tuple(pieces), index, created, __version__
    )


# ---------------------------------------------------------------- the app: a revision put together from its pieces


def assemble(
    snapshot: Path, head: Head, staging: Path, checks: Path, where: str, lazy: bool = False
) -> tuple[list[Path], np.ndarray]:
    """Write into `staging` the revision `head` of the files in `snapshot` as a bundle folder (bundle.load_bundle's
    format, its images left in the pieces' tars: fashion_search.images), checking every piece it has not checked
    before (its files' sha256, every image against its digest, the vectors' shape and values, the index rows) and
    remembering each in `checks/<piece id>/`. Returns the pieces' tars and where each product's image lies in them
    (images.write_shard_index's arguments, for the caller to write once the folder is complete).

    Raises:
        BundleError: a piece that does not make a catalogue, or file names found twice.
    """
    parts = [_checked(snapshot, piece, checks / piece.id, head, where, lazy) for piece in head.pieces]
    live = [piece.live for piece in head.pieces]
    count = sum(len(rows) for rows in live)
    if count == 0:
        raise BundleShapeError(f"{where} has no products: the catalogue is empty.")
    filenames = [part.filenames[row] for part, rows in zip(parts, live) for row in rows]
    if len(set(filenames)) != len(filenames):
        raise BundleFormatError(f"{where} holds a file name twice among its pieces. Push the catalogue again.")
    staging.mkdir(parents=True, exist_ok=True)
    # The vectors, names and metadata stay in the pieces' files (load_revision): only the list of them is written.
    listed = [
        (
            snapshot / piece.path(VECTORS),
            snapshot / piece.path(ROWS),
            piece.files[piece.path(ROWS)],
            piece.rows,
            list(piece.removed),
        )
        for piece in head.pieces
    ]
    data = [write_vector_list(staging, listed, head.dim, checked_as_read=lazy)]
    if head.index:
        data += _assemble_index(snapshot, head, live, staging, lazy)
    manifest = {
        "format_version": 1,
        "model": head.model,
        "preprocessing": head.preprocessing,
        "dim": head.dim,
        "count": count,
        "dtype": "float32",
        "files": {name: sha256_file(staging / name) for name in data},
        "created": head.created,
        "project_version": head.project_version,
        "pieces": [piece.id for piece in head.pieces],
    }
    write_atomic(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    spans = np.concatenate([part.spans[rows] for part, rows in zip(parts, live)])
    spans["shard"] = np.repeat(np.arange(len(live), dtype=np.uint32), [len(rows) for rows in live])
    return [snapshot / piece.path(TAR) for piece in head.pieces], spans


@dataclass(frozen=True)
class _Checked:
    rows: PieceRows
    spans: np.ndarray

    @property
    def filenames(self) -> list[str]:
        return self.rows.filenames


def _checked(snapshot: Path, piece: Piece, check: Path, head: Head, where: str, lazy: bool = False) -> _Checked:
    """A piece's rows and where its images lie, checked now or (the same files, the tar's size unchanged) before.

    `lazy` (a mounted repo, read where it lies): its vectors and images are not read here but checked as they are
    read (`vectors.StackedVectors`, `images.ShardImages`), each row against its digest in rows.json; where its images
    lie comes from rows.json too (a piece pushed before that: its tar is read once, as without `lazy`).
    """
    label = f"{where}, piece {piece.id}"
    tar = snapshot / piece.path(TAR)
    # What was checked: the head's digests, and the files behind the snapshot's links (huggingface_hub's blobs are
    # named by their content, so the same blob is the same bytes; a commit that changes a piece's file without its
    # digest in the head gets another blob, and is checked again).
    blobs = {path: os.path.realpath(snapshot / path) for path in sorted(piece.files)}
    try:
        recorded = json.loads((check / _CHECKED).read_text(encoding="utf-8"))
        if recorded == {"files": piece.files, "blobs": blobs, "tar_size": tar.stat().st_size, "lazy": lazy}:
            spans = np.load(check / _SPANS, allow_pickle=False)
            if spans.dtype == SPAN_DTYPE and spans.shape == (piece.rows,):
                return _Checked(shared_rows(snapshot / piece.path(ROWS), piece.rows, None, label), spans)
    except (OSError, ValueError, KeyError, BundleError):
        pass
    # Left to be checked as read: the tar (every image against rows.json, below; lazy: when served), and with `lazy`
    # the vectors (each row against rows.json) and the index's codes (whole, by the index once it has answered).
    as_read = {piece.path(TAR)} | ({piece.path(VECTORS), *(piece.index_files or ())[1:]} if lazy else set())
    for path, digest in piece.files.items():
        if path in as_read:
            continue
        _check_file(snapshot / path, digest, where)
    rows = shared_rows(snapshot / piece.path(ROWS), piece.rows, None, label)  # (hashed above)
    if lazy:
        _check_array(snapshot / piece.path(VECTORS), np.float32, (piece.rows, head.dim), label)  # (its header)
    else:
        _check_vectors(snapshot / piece.path(VECTORS), (piece.rows, head.dim), label)
    if piece.index_files is not None:
        lists, codes = piece.index_files
        _check_array(snapshot / lists, np.int32, (piece.rows,), label)
        _check_array(snapshot / codes, np.float32, None, label)
    if not tar.is_file():
        raise BundleMissingFile(f"{tar} ({label}) is missing. Start with the Hub reachable to download it again.")
    digests = {f"{IMAGES}/{name}": digest for name, digest in zip(rows.filenames, rows.images)}
    if len(digests) != piece.rows:
        raise BundleFormatError(f"{label} holds a file name twice. Push the catalogue again.")
    if lazy and rows.image_spans is not None:
        spans = np.zeros(piece.rows, dtype=SPAN_DTYPE)
        spans["offset"], spans["size"] = np.array(rows.image_spans, dtype=np.uint64).reshape(piece.rows, 2).T
        if piece.rows and int((spans["offset"] + spans["size"]).max()) > tar.stat().st_size:
            raise BundleFormatError(f"{label}: rows.json places images beyond the end of its {TAR}.")
    else:
        try:
            spans = index_shards([tar], digests, rows.filenames)
        except BundleError as err:
            raise type(err)(f"{label}: {err}") from err
    check.mkdir(parents=True, exist_ok=True)
    _save(check / _SPANS, spans)
    record = {"files": piece.files, "blobs": blobs, "tar_size": tar.stat().st_size, "lazy": lazy}
    write_atomic(check / _CHECKED, json.dumps(record).encode())
    return _Checked(rows, spans)


def image_digests_to_check(bundle: Bundle) -> list[str] | None:
    """For a revision whose images are checked as they are read (a mounted repo's): each row's image digest; None
    for one whose images were all checked when it was put together."""
    if not bundle.pieces:
        return None
    if not bundle.embeddings.checked_as_read:
        return None
    live = [rows for _, rows in bundle.embeddings.parts]
    return [part.images[row] for part, rows in zip(bundle.pieces, live) for row in rows]


def shared_rows(path: Path, rows: int, digest: str | None, where: str) -> PieceRows:
    """A piece's rows.json as `read_rows` reads it (first checked against `digest`, if given), parsed once in this
    process for as long as a loaded revision holds it: two snapshots that share a piece share its names and
    metadata, and a swap parses only the new pieces'."""
    key = (os.path.realpath(path), rows)  # huggingface_hub's blobs are named by their content
    with _shared_lock:
        found = _shared.get(key)
    if found is not None:
        return found
    if digest is not None:
        _check_file(Path(path), digest, where)
    found = read_rows(path, rows, where)
    with _shared_lock:
        return _shared.setdefault(key, found)


def load_revision(root: Path) -> Bundle:
    """The revision folder `assemble` wrote, loaded as `bundle.load_bundle` loads a bundle: its vectors left in the
    pieces' files (fashion_search.vectors) and its names, sources and metadata taken from the pieces' rows, shared
    with any other loaded revision of the same pieces. The list and the index files are hashed against the
    manifest, each piece's rows against the head's sha256 when first read; the images were checked by `assemble`.

    Raises:
        BundleError: a file missing, damaged or not what the manifest says.
    """
    manifest = read_manifest(root)
    files = manifest["files"]
    for name, digest in files.items():
        if name not in (VECTOR_LIST, index_codes.CODES_LIST, *INDEX_FILES):
            raise BundleFormatError(f"{root / MANIFEST} lists {name!r}, which is not a file of a revision in pieces.")
        _check_file(root / name, digest, str(root))
    entries = list_vector_files(root)
    embeddings = open_stacked(entries, manifest["dim"])
    parts = tuple(
        shared_rows(Path(entry["rows_path"]), entry["rows"], entry["rows_sha256"], f"{root}, piece {number}")
        for number, entry in enumerate(entries)
    )
    for number, (entry, part) in enumerate(zip(entries, parts)):
        if entry.get("checked_as_read"):  # a mounted repo's piece: its vectors are checked as they are read
            embeddings.check_as_read(number, part.vectors, entry["path"])
    live = [rows for _, rows in embeddings.parts]
    filenames = [part.filenames[row] for part, rows in zip(parts, live) for row in rows]
    sources = [part.sources[row] for part, rows in zip(parts, live) for row in rows]
    metadata = None
    if any(part.metadata is not None for part in parts):
        empty: dict = {}
        metadata = [
            part.metadata[row] if part.metadata is not None else empty
            for part, rows in zip(parts, live)
            for row in rows
        ]
    if len(filenames) != manifest["count"] or len(embeddings) != manifest["count"]:
        raise BundleCountMismatch(f"The revision at {root} disagrees on its row count. Start with the Hub reachable.")
    return Bundle(root, embeddings, filenames, metadata, sources, manifest, pieces=parts)


def _assemble_index(snapshot: Path, head: Head, live: list[np.ndarray], staging: Path, lazy: bool) -> list[str]:
    """The index files of the revision: its shared ones linked, its rows' lists put together, its pieces' codes files
    listed (index_codes.CODES_LIST: read where they lie, and put together in list order once the index has answered;
    `lazy`, a mounted repo's: not checked yet), and an earlier revision's codes put together linked as its base if
    one holds most of its rows (index_codes.link_base: a swap then reads only the new pieces' codes)."""
    for path in head.index:
        link_or_copy(snapshot / path, staging / path.rsplit("/", 1)[1])
    lists = np.concatenate(
        [np.load(snapshot / piece.index_files[0], mmap_mode="r")[rows] for piece, rows in zip(head.pieces, live)]
    ).astype(np.int32)
    _save(staging / INDEX_FILES[4], lists)
    files = [snapshot / piece.index_files[1] for piece in head.pieces]
    shas = [piece.files[piece.index_files[1]] for piece in head.pieces]
    listing = [
        {"path": os.path.realpath(file), "size": file.stat().st_size, "sha256": sha, "checked": not lazy}
        for file, sha in zip(files, shas)
    ]
    (staging / index_codes.CODES_LIST).write_text(json.dumps({"pieces": listing}, indent=1), encoding="utf-8")
    others = [folder for folder in staging.parent.iterdir() if folder.is_dir() and not folder.name.startswith(".")]
    index_codes.link_base(staging, others, shas, [len(rows) for rows in live])
    return [*INDEX_SHARED, INDEX_FILES[4], index_codes.CODES_LIST]


def _check_file(path: Path, digest: str, where: str) -> None:
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise BundleMissingFile(f"{path} of {where} is missing ({exc}). Start with the Hub reachable.") from exc
    if actual != digest:
        raise BundleHashMismatch(
            f"{path} of {where} does not match its sha256 in {HEAD} ({actual[:12]}…, expected {digest[:12]}…): the "
            "file was changed or damaged. Push the catalogue again."
        )


def _check_array(path: Path, dtype, shape: tuple | None, where: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise BundleFormatError(f"{path} ({where}) is not a plain .npy array ({exc}).") from exc
    if array.dtype != dtype or (shape is not None and array.shape != shape):
        raise BundleShapeError(
            f"{path} ({where}) holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}."
        )
    return array


def _check_vectors(path: Path, shape: tuple, where: str) -> None:
    vectors = _check_array(path, np.float32, shape, where)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    if not np.isfinite(norms).all():
        raise BundleValueError(f"{path} ({where}) has non-finite values (NaN or inf).")
    if np.any(np.abs(norms - 1.0) > UNIT_TOLERANCE):
        raise BundleValueError(f"{path} ({where}) has rows that are not unit vectors.")


def _save(path: Path, array: np.ndarray) -> Path:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return path


def vector_digest(bundle: Bundle, row: int) -> str:
    """What identifies a row's vector in rows.json: 16 hex digits of the sha256 of its float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(bundle.embeddings[row], dtype=np.float32).tobytes()).hexdigest()[:16]


def _key(image: str, source: str, vector: str, metadata: dict | None) -> tuple:
    """A product as it is: a row of a piece stays only if the bundle's is the same in all of these."""
    return image, source, vector, None if metadata is None else json.dumps(metadata, ensure_ascii=False, sort_keys=True)


def _interned(row: dict) -> dict:
    return {sys.intern(key): sys.intern(value) if type(value) is str else value for key, value in row.items()}
