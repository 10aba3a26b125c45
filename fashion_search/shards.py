"""A bundle's images packed for the trip to the Hub: WebDataset `.tar` shards, planned so that they stay stable.

    plan = plan_shards(bundle)                       # [Shard(path="shards/<id>.tar", filenames=[...]), ...]
    write_shard(plan[0], bundle.images_dir, "x.tar")  # image + JSON per product, byte-for-byte reproducible
    spans = index_shards(tar_paths, bundle_files, filenames)  # every image checked where it lies; nothing unpacked

A shard holds, per product in file-name order, `<key>.<ext>` (the image's bytes) and `<key>.json` (its file name and
metadata), where the key is the file name without its extension and with the dots of that stem written `%2E`: the
WebDataset convention (and the Hub's Dataset Viewer) takes everything after the first dot of a member as its type.

Shards are cut where a product's file name hashes to a boundary (content-defined, like rsync's rolling checksums),
between SHARD_MIN_FILES and SHARD_MAX_FILES products and below SHARD_MAX_BYTES: adding, changing or removing a
product changes the one shard it falls in, not the ones after it. A shard is named after what it holds (file names,
image hashes, metadata), so an unchanged shard keeps its name and is never sent again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fashion_search.bundle import (
    IMAGES,
    Bundle,
    BundleFormatError,
    BundleHashMismatch,
    BundleMissingFile,
    BundleUnsafePath,
    is_relative_name,
)

SHARDS = "shards"  # the folder of the repo that holds them
SHARD_MIN_FILES = 1024
SHARD_AVG_FILES = 4096  # 44k products: about a dozen shards
SHARD_MAX_FILES = 16384
SHARD_MAX_BYTES = 1 << 30  # the size the Hub's WebDataset guide suggests
SHARD_NAME = re.compile(rf"{SHARDS}/[0-9a-f]{{20}}\.tar")
_FORMAT = "fashion-search-webdataset-1"  # part of every shard's name: a change of layout renames every shard
_ESCAPES = {"%": "%25", ".": "%2E"}
# Where an image lies: its shard (a position in a list of shards), the offset of its bytes and their number.
SPAN_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("size", "<u8")])


@dataclass(frozen=True)
class Shard:
    path: str  # in the repo: shards/<20 hex of the content id>.tar
    filenames: list[str]  # bundle file names, in the order they are packed
    documents: list[bytes]  # their JSON members: file name and metadata


def plan_shards(bundle: Bundle) -> list[Shard]:
    """Cut the bundle's products into shards; the same products with the same content give the same shards."""
    files = bundle.manifest["files"]
    rows = dict(zip(bundle.filenames, bundle.metadata or [{}] * len(bundle.filenames)))  # {} without metadata
    images = str(bundle.images_dir)
    shards, current, size = [], [], 0
    for name in sorted(rows):
        member_name(name)  # refuse a name that cannot be packed before anything is sent
        current.append(name)
        size += os.stat(os.path.join(images, name)).st_size
        if (
            len(current) >= SHARD_MAX_FILES
            or size >= SHARD_MAX_BYTES
            or (len(current) >= SHARD_MIN_FILES and _is_boundary(name))
        ):
            shards.append(current)
            current, size = [], 0
    if current:
        shards.append(current)
    plan = []
    for names in shards:
        documents = [
            json.dumps({**rows[name], "filename": name}, ensure_ascii=False, sort_keys=True).encode() for name in names
        ]
        plan.append(Shard(_shard_path(names, documents, files), names, documents))
    return plan


def write_shard(shard: Shard, images_dir: Path, path: str | Path) -> Path:
    """Write `shard` as a tar at `path`: the same shard always gives the same bytes (no times, owners or modes)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, document in zip(shard.filenames, shard.documents):
            member = member_name(name)
            with open(os.path.join(images_dir, name), "rb") as image:
                tar.addfile(_member_info(member, os.fstat(image.fileno()).st_size), image)
            tar.addfile(_member_info(member.split(".", 1)[0] + ".json", len(document)), io.BytesIO(document))
    return Path(path)


def index_shards(tar_paths: Sequence[str | Path], files: Mapping[str, str], order: Sequence[str]) -> np.ndarray:
    """Read the shards once, check every image against `files` (a manifest's sha256s); where each image's bytes are.

    Nothing is written and nothing is unpacked: each member's header is read, and each image's bytes are hashed
    where they lie in its shard. A shard is refused unless it is a tar of regular members (no sparse member, link
    or device), each image named in the manifest, found once, and hashing to the manifest's digest, each JSON right
    after its image; every image of the manifest must be found.

    Returns:
        a SPAN_DTYPE array, one row per name of `order` (file names below images/): its shard's position in
        `tar_paths`, and its bytes' offset and size in that shard.

    Raises:
        BundleUnsafePath, BundleHashMismatch, BundleFormatError, BundleMissingFile: the shards are not exactly the
        manifest's images (the message names the shard and member, and says what to do).
    """
    wanted = {name[len(IMAGES) + 1 :]: digest for name, digest in files.items() if name.startswith(f"{IMAGES}/")}
    rows = {name: row for row, name in enumerate(order)}
    spans = np.zeros(len(order), dtype=SPAN_DTYPE)
    done: set[str] = set()
    for number, tar_path in enumerate(tar_paths):
        try:
            with tarfile.open(tar_path, "r:") as tar:
                for name, member in _checked_images(tar, Path(tar_path), wanted, done):
                    if (row := rows.get(name)) is not None:
                        spans[row] = (number, member.offset_data, member.size)
        except tarfile.TarError as exc:  # not a tar, a damaged header, or data cut short
            raise BundleFormatError(
                f"Shard {Path(tar_path).name} is not a readable tar ({exc}): the download is damaged or the revision "
                "was not pushed by precompute.py. Start again to download it anew, or push the catalogue again."
            ) from exc
    if missing := sorted(wanted.keys() - done):
        raise BundleMissingFile(f"The shards lack {len(missing)} images of the manifest, e.g. images/{missing[0]}.")
    if unlisted := [name for name in order if name not in wanted]:
        raise BundleMissingFile(f"The manifest does not list images/{unlisted[0]}; the revision is refused.")
    return spans


def _checked_images(
    tar: tarfile.TarFile, path: Path, wanted: Mapping[str, str], done: set[str]
) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """(file name, member) of each image of one shard, checked as `index_shards` says; adds the names to `done`."""
    length = os.stat(path).st_size
    after_image = False
    for member in tar:
        where = f"Shard {path.name}, member {member.name!r}"
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
            raise BundleUnsafePath(
                f"{where} is {_kind(member)}, not a plain file; the shard is refused. "
                "Push the catalogue again with precompute.py."
            )
        if member.offset_data + member.size > length:
            raise BundleFormatError(f"{where}: the shard ends inside it ({length:,} bytes); it is truncated.")
        name = filename_of_member(member.name)
        if name is None:  # the product's JSON: never read, never written
            if not after_image or not is_relative_name(member.name):
                raise BundleUnsafePath(f"{where} is not a product's JSON after its image; the shard is refused.")
            after_image = False
            continue
        if not is_relative_name(name) or name not in wanted:
            raise BundleUnsafePath(f"{where} is not an image of the bundle's manifest; the shard is refused.")
        if name in done:
            raise BundleFormatError(f"{where}: images/{name} comes twice. Push the catalogue again.")
        if _sha256_of(tar, member) != wanted[name]:
            raise BundleHashMismatch(
                f"{where} does not match the manifest's sha256 for images/{name}: the download is damaged. "
                "Start again to download it anew."
            )
        done.add(name)
        after_image = True
        yield name, member
    with open(path, "rb") as handle:  # tarfile takes a shard cut at a header for its end: look for the real one
        handle.seek(tar.offset)
        if handle.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
            raise BundleFormatError(
                f"Shard {path.name} has no end-of-archive after its last member ({tar.offset:,} bytes in): "
                "it is truncated. Start again to download it anew."
            )


def _sha256_of(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    with tar.extractfile(member) as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _kind(member: tarfile.TarInfo) -> str:
    if member.issparse():
        return f"a sparse file (declaring {member.size:,} bytes)"
    if member.issym() or member.islnk():
        return "a link"
    if member.isdir():
        return "a folder"
    return "a device or special file" if member.isdev() else f"of tar type {member.type!r}"


def member_name(filename: str) -> str:
    """`dir/a.b.jpg` -> `dir/a%2Eb.jpg`: the stem's dots (and percent signs) escaped, the extension kept."""
    folder, _, base = filename.rpartition("/")
    stem, dot, extension = base.rpartition(".")
    if not dot or not stem or extension.lower() == "json":
        raise BundleFormatError(
            f"images/{filename} cannot be packed for the Hub: "
            "a catalogue image needs an image extension (.jpg, .png, …)."
        )
    escaped = "".join(_ESCAPES.get(char, char) for char in stem)
    return f"{folder}/{escaped}.{extension}" if folder else f"{escaped}.{extension}"


def filename_of_member(member: str) -> str | None:
    """The inverse of `member_name`; None for a product's JSON member."""
    folder, _, base = member.rpartition("/")
    escaped, dot, extension = base.partition(".")
    if not dot or extension == "json":
        return None
    stem = re.sub("%25|%2E", lambda match: "%" if match.group() == "%25" else ".", escaped)
    return f"{folder}/{stem}.{extension}" if folder else f"{stem}.{extension}"


def _is_boundary(name: str) -> bool:
    value = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return value % (SHARD_AVG_FILES - SHARD_MIN_FILES) == 0


def _shard_path(names: list[str], documents: list[bytes], files: Mapping[str, str]) -> str:
    """shards/<id>.tar, the id a hash of every member: names, the images' sha256 (from the manifest), the JSONs."""
    content = hashlib.sha256(_FORMAT.encode())
    for name, document in zip(names, documents):
        content.update(json.dumps([name, files[f"{IMAGES}/{name}"]]).encode() + document)
    return f"{SHARDS}/{content.hexdigest()[:20]}.tar"


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info
