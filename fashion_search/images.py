"""Where a catalogue image's bytes come from: a bundle's images/ folder, or byte ranges of a Hub revision's shards.

    bundle, images = load_catalogue(folder)  # FolderImages for a bundle folder, ShardImages for a Hub revision
    images.read(row)                       # the image's bytes, exactly as in the catalogue
    images.file(row)                       # a file holding exactly them (a folder's own file), or None
    images.route_path(row)                 # where the app's file route serves it (ROUTE/<revision>/<name>)
    images.name_of_file(path)              # the file name whose file `path` is (its own, or a remembered copy), or None

A Hub revision is served from one copy of its files: the shards stay as huggingface_hub downloaded them, and
`write_shard_index` records, once every image has been checked, where each image's bytes lie in them
(SHARD_SPANS, one row per product) and which shard files those are (SHARD_LIST, written last: its presence says the
revision was verified). Nothing is unpacked, so a million products make two small files, not a million. A followed
bundle folder (fashion_search.live) is read through a handle on the folder it was loaded from, so its pictures stay
readable after precompute.py swaps a new bundle in. The app serves every catalogue's pictures, the demo's included, by
its file route, by revision and name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import os
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

import numpy as np

from fashion_search.bundle import (
    VECTOR_LIST,
    Bundle,
    BundleError,
    BundleFormatError,
    BundleMissingFile,
    load_bundle,
    read_manifest,
)
from fashion_search.files import write_atomic
from fashion_search.pieces import image_digests_to_check, load_revision
from fashion_search.shards import SPAN_DTYPE

log = logging.getLogger(__name__)

SHARD_SPANS = "image-spans.npy"  # SPAN_DTYPE rows, in the order of filenames.json
SHARD_LIST = "image-shards.json"  # {"format_version", "revision", "count", "shards": [{"path", "size"}]}
# The app's file route: ROUTE/<revision>/<file name>. Under Gradio's API prefix: with server-side rendering (on for a
# Space) Gradio's Node server answers every other path with its page, and sends only these on to the app.
ROUTE = "/gradio_api/catalogue-images"
_FORMAT_VERSION = 1
_FILES_KEPT = 4096  # copies of images remembered by remember_file
# Served with their own type; anything else goes out as bytes to save, never to render (an SVG can hold a script).
_RASTER_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/avif"}


class CatalogueImages:
    """The images of a loaded catalogue, by row (the order of filenames.json)."""

    static_paths: list[Path]  # folders Gradio may serve in place (gr.set_static_paths); [] when none
    served_by_route = False  # True: the app's file route serves them (route_path), by revision and name
    revision = ""  # what the route's paths name: the Hub commit, or a followed folder's manifest digest

    def __init__(self, filenames: list[str]):
        self.filenames = filenames
        self._files: OrderedDict[str, str] = OrderedDict()  # remember_file's

    def read(self, row: int) -> bytes:
        raise NotImplementedError

    def file(self, row: int) -> Path | None:
        """A file that holds exactly the image, when the catalogue keeps one."""
        return None

    def name_of_file(self, path: str | Path) -> str | None:
        """The catalogue file name whose file is at `path` (its own, or one remember_file was told of), else None."""
        return self._files.get(str(path))

    def remember_file(self, path: str | Path, row: int) -> None:
        """`path` holds a copy of the image of `row` (a query photo: image_route.photo_file); name_of_file(path) will
        say so. The latest are kept."""
        self._files[str(path)] = self.filenames[row]
        self._files.move_to_end(str(path))
        while len(self._files) > _FILES_KEPT:
            self._files.popitem(last=False)

    def route_path(self, row: int) -> str:
        """The path (below the app's root URL) the file route serves the image at: the revision and the file name,
        so that it names the product whatever its row (served only while that revision is, fashion_search.webapp)."""
        return f"{ROUTE}/{self.revision}/{quote(self.filenames[row], safe='/')}"


class FolderImages(CatalogueImages):
    """A bundle folder's images/: a file per product, served by the app's file route under `revision` (the app's: the
    folder's manifest digest; a followed folder's bundle is loaded through a handle on the folder), or, made without
    one, in place by Gradio."""

    def __init__(self, bundle: Bundle, revision: str = ""):
        super().__init__(bundle.filenames)
        self.images_dir = bundle.images_dir
        self.revision = revision
        self.served_by_route = bool(revision)
        self.static_paths = [] if revision else [bundle.images_dir]

    def read(self, row: int) -> bytes:
        return self.file(row).read_bytes()

    def file(self, row: int) -> Path:
        return self.images_dir / self.filenames[row]

    def name_of_file(self, path: str | Path) -> str | None:
        if self.served_by_route:
            return super().name_of_file(path)
        try:
            return Path(path).resolve().relative_to(self.images_dir.resolve()).as_posix()
        except (TypeError, ValueError, OSError):
            return None


class ShardImages(CatalogueImages):
    """A Hub revision's images, read from its shards by offset and served by the app's file route."""

    static_paths: list[Path] = []
    served_by_route = True

    def __init__(self, folder: Path, filenames: list[str], digests: list[str] | None = None):
        """`digests`: each row's image sha256, checked as the image is read (a mounted repo's revision, whose images
        were not read when it was put together); None: all were checked then."""
        super().__init__(filenames)
        self.digests = digests
        listing = read_shard_list(folder)
        self.revision = str(listing["revision"])
        self.shards = [Path(shard["path"]) for shard in listing["shards"]]
        for shard, entry in zip(self.shards, listing["shards"]):
            try:
                size = shard.stat().st_size
            except OSError:
                size = None
            if size != entry["size"]:
                raise BundleMissingFile(
                    f"The catalogue's shard {shard} is {'missing' if size is None else 'changed'}; "
                    "start with the Hub reachable to download it again."
                )
        try:
            self.spans = np.load(folder / SHARD_SPANS, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleFormatError(f"{folder / SHARD_SPANS} could not be read ({exc}).") from exc
        if (
            self.spans.dtype != SPAN_DTYPE
            or self.spans.shape != (len(filenames),)
            or listing["count"] != len(filenames)
        ):
            raise BundleFormatError(f"{folder / SHARD_SPANS} does not match the catalogue's {len(filenames)} rows.")

    def read(self, row: int) -> bytes:
        shard, offset, size = self.spans[row]
        descriptor = os.open(self.shards[shard], os.O_RDONLY)
        try:
            data = os.pread(descriptor, int(size), int(offset))
        finally:
            os.close(descriptor)
        if len(data) != size:
            raise OSError(f"{self.shards[shard]} ends before images/{self.filenames[row]}")
        if self.digests is not None and hashlib.sha256(data).hexdigest() != self.digests[row]:
            log.error(
                "The image of %s in %s does not match its digest: the file was changed or damaged.",
                self.filenames[row],
                self.shards[shard],
            )
            raise OSError(f"The image of {self.filenames[row]} in {self.shards[shard]} does not match its digest.")
        return data


def media_type(name: str) -> str:
    """The type a catalogue image is served with: its own for raster images, else bytes to download."""
    guessed, _ = mimetypes.guess_type(name)
    return guessed if guessed in _RASTER_TYPES else "application/octet-stream"


def load_catalogue(folder: str | Path, revision: str = "") -> tuple[Bundle, CatalogueImages]:
    """A bundle folder or a fetched Hub revision, loaded and verified (load_bundle), and where its images come from.

    A Hub revision's images are not hashed again here: `fetch_bundle` checked each as it read the shards, and wrote
    SHARD_LIST only then; that its shards are still there, with the same sizes, is checked instead. A bundle folder
    given a `revision` (followed, fashion_search.live) has its images served by the app's file route under it.
    """
    shards = is_shard_folder(Path(folder))
    if is_piece_revision(Path(folder)):  # a Hub revision put together from its pieces
        bundle = load_revision(Path(folder))
    else:
        bundle = load_bundle(folder, verify_images=not shards)
    if not shards:
        return bundle, FolderImages(bundle, revision)
    return bundle, ShardImages(bundle.root, bundle.filenames, image_digests_to_check(bundle))


def is_piece_revision(folder: Path) -> bool:
    """A fetched (or mounted) Hub revision in pieces, whose manifest lists its pieces' files (pieces.assemble)."""
    try:
        return VECTOR_LIST in read_manifest(folder)["files"]
    except BundleError:
        return False  # load_bundle says what is wrong


def is_shard_folder(folder: Path) -> bool:
    """A fetched Hub revision whose images stay in their shards (and were verified: the shard list comes last)."""
    return (Path(folder) / SHARD_LIST).is_file()


def write_shard_index(folder: Path, revision: str, shards: list[Path], spans: np.ndarray) -> None:
    """Record where the images of `folder`'s revision lie in `shards`; call it once they have all been checked."""
    with open(folder / SHARD_SPANS, "wb") as handle:
        np.save(handle, spans, allow_pickle=False)
    entries = [{"path": str(Path(shard).resolve()), "size": Path(shard).stat().st_size} for shard in shards]
    listing = {"format_version": _FORMAT_VERSION, "revision": revision, "count": len(spans), "shards": entries}
    write_atomic(folder / SHARD_LIST, json.dumps(listing, indent=1).encode())


def read_shard_list(folder: Path) -> dict:
    path = Path(folder) / SHARD_LIST
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
        if listing["format_version"] != _FORMAT_VERSION:
            raise ValueError(f"format version {listing['format_version']!r}")
        return listing
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleFormatError(
            f"{path} could not be read ({exc}); start with the Hub reachable to fetch again."
        ) from exc
