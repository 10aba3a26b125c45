"""The fetched revisions of Hub catalogues: a folder per commit, made once from huggingface_hub's snapshot of it.

    folder = local_revision(root, hub_cache, "OWNER/NAME", sha)   # complete already, or made from a complete snapshot
    folder = assemble(snapshot, "OWNER/NAME", sha, revision_folder(root, "OWNER/NAME", sha))   # after a download
    keep(folder, hub_cache, "OWNER/NAME")                           # mark it used; older revisions are deleted

A folder holds links to the revision's data files (the downloaded ones: one copy on disk) and, for a revision in
shards, where each image lies in them (fashion_search.images), written only once every image has been checked as
the shards were read (fashion_search.shards.index_shards). Nothing is unpacked and nothing of a refused revision is
kept: not its folder, nor its download.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from huggingface_hub import scan_cache_dir, try_to_load_from_cache

from fashion_search import codes, pieces
from fashion_search.bundle import (
    DATA_FILES,
    IMAGES,
    MANIFEST,
    VECTOR_LIST,
    BundleError,
    BundleFormatError,
    read_filenames,
    read_manifest,
)
from fashion_search.files import link_or_copy
from fashion_search.images import is_shard_folder, read_shard_list, write_shard_index
from fashion_search.shards import SHARD_NAME, SHARDS, index_shards
from fashion_search.vectors import list_vector_files

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
SHARD_INDEX = "shards.json"  # the revision's list of shards
# Revisions of one catalogue kept in the cache: the one just fetched and the one used before it (a process that is
# still serving it, during a restart, keeps its images). Older ones are deleted after each fetch from the Hub.
KEEP_REVISIONS = 2
RECENT_CHECK_SECONDS = 600


def revision_folder(root: Path, repo_id: str, sha: str) -> Path:
    owner, name = repo_id.split("/")
    return root / "bundles" / f"datasets--{owner}--{name}" / sha


def is_complete(folder: Path) -> bool:
    """A revision folder with every data file of its manifest, and its images: in shards that were all checked and
    are still there (and of a revision in pieces, its pieces' vectors and rows), or (a revision pushed one file per
    image) in images/. Hashes are load_bundle's to check."""
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        if not is_shard_folder(folder):
            return all(os.path.isfile(folder / name) for name in files)
        shards = read_shard_list(folder)["shards"]
        data = [name for name in files if not name.startswith(f"{IMAGES}/")]
        pieces_files = list_vector_files(folder) if VECTOR_LIST in files else []  # (their vectors and rows)
        index_files = codes.read_list(folder) if codes.CODES_LIST in files else []  # (the index's codes)
        return (
            all(os.path.isfile(folder / name) for name in data)
            and all(os.path.getsize(e["path"]) == e["size"] for e in [*shards, *pieces_files, *index_files])
            and all(os.path.isfile(entry["rows_path"]) for entry in pieces_files)
        )
    except (OSError, ValueError, KeyError, TypeError, BundleError):
        return False


def local_revision(root: Path, library_cache: Path, repo_id: str, sha: str) -> Path | None:
    """The folder of commit `sha`, made from huggingface_hub's cache if all its files are there; None if not."""
    folder = revision_folder(root, repo_id, sha)
    if is_complete(folder):
        return folder
    snapshot = _cached_snapshot(library_cache, repo_id, sha)
    return None if snapshot is None else assemble(snapshot, repo_id, sha, folder)


def _cached_snapshot(library_cache: Path, repo_id: str, sha: str) -> Path | None:
    """The snapshot folder of commit `sha` in huggingface_hub's cache when every file the app needs is in it (as a
    Space's preload_from_hub leaves it); None otherwise."""

    def cached(name: str) -> Path | None:
        found = try_to_load_from_cache(repo_id, name, cache_dir=library_cache, revision=sha, repo_type=REPO_TYPE)
        return Path(found) if isinstance(found, str) else None

    head = cached(pieces.HEAD)
    if head is not None:
        try:
            needed = list(pieces.read_head(head, f"{repo_id}@{sha}").files())
        except BundleError:
            return None
        return head.parent if all(cached(name) is not None for name in needed) else None
    manifest, index = cached(MANIFEST), cached(SHARD_INDEX)
    if manifest is None or index is None:  # (a revision of one file per image is always asked of the Hub)
        return None
    try:
        files = manifest_files(manifest.parent, repo_id, sha)
        needed = [name for name in DATA_FILES if name in files] + shard_paths(index.parent, repo_id, sha)
    except BundleError:
        return None
    return manifest.parent if all(cached(name) is not None for name in needed) else None


def assemble(snapshot: Path, repo_id: str, sha: str, folder: Path) -> Path:
    """Make `folder` the revision in `snapshot`: links to its data files and, once every image has been checked in
    its shards, where each lies (a revision of one file per image: links to them in images/; a revision in pieces:
    its data files put together from the pieces', fashion_search.pieces.assemble). Returns `folder`."""
    if (snapshot / pieces.HEAD).is_file():
        where = f"{repo_id}@{sha}"
        try:
            return assemble_pieces(snapshot, pieces.read_head(snapshot / pieces.HEAD, where), where, sha, folder)
        except BundleError:
            _forget(snapshot.parent.parent, sha)  # so that the next start downloads it anew
            raise
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    files = manifest_files(snapshot, repo_id, sha)
    data = [name for name in DATA_FILES if name in files]
    if (snapshot / SHARD_INDEX).is_file():
        shards = [snapshot / path for path in shard_paths(snapshot, repo_id, sha)]
        try:
            spans = index_shards(shards, files, _filenames(snapshot, repo_id, sha))  # before anything is written
        except BundleError:
            _forget(snapshot.parent.parent, sha)  # so that the next start downloads it anew
            raise
        staging.mkdir(parents=True)
        write_shard_index(staging, sha, shards, spans)
    else:
        staging.mkdir(parents=True)
        shutil.copytree(snapshot / IMAGES, staging / IMAGES, copy_function=link_or_copy)
    for name in [*data, MANIFEST]:
        link_or_copy(snapshot / name, staging / name, fallback=os.symlink)
    return _swap_in(staging, folder, f"{repo_id}@{sha}")


def assemble_pieces(
    source: Path, head: pieces.Head, where: str, revision: str, folder: Path, lazy: bool = False
) -> Path:
    """Make `folder` the revision `head` of the catalogue in pieces at `source` (a Hub snapshot, or a mounted repo),
    its files read where they are: every piece not checked before is checked first (pieces.assemble; `lazy`: its
    vectors and images as they are read). Returns it.

    Raises:
        BundleError: a piece missing or not what the head says; nothing is left of the folder.
    """
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        tars, spans = pieces.assemble(source, head, staging, piece_checks(folder.parent), where, lazy)
    except BundleError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_shard_index(staging, revision, tars, spans)
    return _swap_in(staging, folder, where)


def _swap_in(staging: Path, folder: Path, where: str) -> Path:
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete or damaged copy
    os.replace(staging, folder)
    logger.info("Catalogue %s is in %s", where, folder)
    return folder


def piece_checks(catalogue: Path) -> Path:
    """Where the pieces of a catalogue (`bundles/<repo>/`, its revisions' folders) are remembered as checked."""
    return catalogue.parent.parent / "pieces" / catalogue.name


def prune_piece_checks(catalogue: Path) -> None:
    """Forget the checks of pieces that no revision folder of the catalogue (`bundles/<repo>/`) names any more."""
    checks = piece_checks(catalogue)
    if not checks.is_dir():
        return
    named = set()
    for folder in catalogue.iterdir():
        try:
            named.update(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("pieces", []))
        except (OSError, ValueError, AttributeError):
            continue
    for check in checks.iterdir():  # (not one checked in the last minutes: a revision being put together uses it)
        if check.name not in named and time.time() - check.stat().st_mtime > RECENT_CHECK_SECONDS:
            shutil.rmtree(check, ignore_errors=True)


def _forget(repo_cache: Path, sha: str) -> None:
    """Delete commit `sha` from huggingface_hub's cache of one repo (`repo_cache`): its files failed the checks."""
    try:
        for repo in scan_cache_dir(repo_cache.parent).repos:
            if repo.repo_path == repo_cache:
                repo_sha = [revision.commit_hash for revision in repo.revisions if revision.commit_hash == sha]
                scan_cache_dir(repo_cache.parent).delete_revisions(*repo_sha).execute()
    except Exception as exc:  # the refusal that follows matters more than the clean-up
        logger.warning("Could not remove the refused download of %s from %s: %s", sha, repo_cache, exc)


def manifest_files(snapshot: Path, repo_id: str, sha: str) -> dict:
    """The manifest's {file: sha256}, read as load_bundle reads it; a BundleError naming the revision otherwise."""
    try:
        return read_manifest(snapshot)["files"]
    except BundleError as err:
        raise type(err)(f"{repo_id}@{sha} is not a catalogue pushed by precompute.py: {err}") from err


def shard_paths(snapshot: Path, repo_id: str, sha: str) -> list[str]:
    """The shards `shards.json` lists, each once and each a shards/<id>.tar; BundleFormatError otherwise."""
    try:
        entries = json.loads((snapshot / SHARD_INDEX).read_text(encoding="utf-8"))["shards"]
        paths = [entry["path"] for entry in entries]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleFormatError(f"The {SHARD_INDEX} of {repo_id}@{sha} cannot be read ({err!r}).") from err
    if not all(isinstance(path, str) and SHARD_NAME.fullmatch(path) for path in paths):
        raise BundleFormatError(f"The {SHARD_INDEX} of {repo_id}@{sha} names files outside {SHARDS}/.")
    if len(set(paths)) != len(paths):
        raise BundleFormatError(f"The {SHARD_INDEX} of {repo_id}@{sha} names a shard twice.")
    return paths


def _filenames(snapshot: Path, repo_id: str, sha: str) -> list[str]:
    try:
        return read_filenames(snapshot)
    except BundleError as err:
        raise type(err)(f"{repo_id}@{sha}: {err}") from err


def keep(folder: Path, library_cache: Path, repo_id: str) -> Path:
    """Mark `folder` as just used, prune older revisions (unpacked and in the library's cache); return it."""
    kept = _prune_older_revisions(folder)
    try:
        cache = scan_cache_dir(library_cache)
    except Exception:  # no library cache yet (a copy unpacked elsewhere) or an unreadable one: nothing to prune
        return folder
    for repo in cache.repos:
        if (repo.repo_id, repo.repo_type) == (repo_id, REPO_TYPE):
            stale = [revision.commit_hash for revision in repo.revisions if revision.commit_hash not in kept]
            if stale:
                cache.delete_revisions(*stale).execute()
    return folder


def forget(folder: Path, library_cache: Path, repo_id: str) -> None:
    """Delete the revision folder `folder` and its commit's files in the library's cache (blobs another revision
    still uses stay): a followed catalogue no longer serves it (fashion_search.live)."""
    shutil.rmtree(folder, ignore_errors=True)
    prune_piece_checks(folder.parent)
    owner, name = repo_id.split("/")
    repo_cache = library_cache / f"{REPO_TYPE}s--{owner}--{name}"
    if repo_cache.is_dir():
        _forget(repo_cache, folder.name)
    logger.info("Removed the catalogue revision %s: no longer served.", folder)


def _prune_older_revisions(current: Path) -> set[str]:
    """Mark `current` as just used; delete all but the KEEP_REVISIONS most recently used revisions beside it.

    Returns the commit shas kept."""
    os.utime(current)
    others = [f for f in current.parent.iterdir() if f.is_dir() and f != current and not f.name.startswith(".")]
    others.sort(key=lambda folder: folder.stat().st_mtime_ns, reverse=True)
    for folder in others[KEEP_REVISIONS - 1 :]:
        shutil.rmtree(folder, ignore_errors=True)
        logger.info(
            "Removed the cached catalogue revision %s (kept the %d most recently used).", folder, KEEP_REVISIONS
        )
    prune_piece_checks(current.parent)
    return {current.name, *(folder.name for folder in others[: KEEP_REVISIONS - 1])}
