"""Hub transfer: push a catalogue bundle to a Hugging Face dataset repo, fetch a pinned revision of it back.

    result = push_bundle("bundle/", "OWNER/NAME")            # token from HF_TOKEN or `hf auth login`
    print(result.catalog_value)                               # OWNER/NAME@<commit sha>: set it as FASHION_CATALOG
    root = fetch_bundle("OWNER/NAME@<commit sha>")            # a plain folder: load_bundle(root) as usual

The Hub endpoint is the library's: HF_ENDPOINT (read when huggingface_hub is imported) unless `endpoint=` is given.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its TransportError is how "the Hub cannot be reached" surfaces
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)

from fashion_search.bundle import IMAGES, MANIFEST

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_SPEC = re.compile(rf"({_NAME})/({_NAME})(?:@([^\s@]+))?")
# Revisions of one catalogue kept in the cache: the one just fetched and the one used before it (a process that is
# still serving it, during a restart, keeps its images). Older ones are deleted after each fetch from the Hub.
KEEP_REVISIONS = 2
# Repo files that are not part of a bundle: the Hub seeds .gitattributes, owners may add a dataset card.
_NOT_BUNDLE = [".gitattributes", "README.md"]
# What "the Hub could not be asked" looks like: no connection or a timeout, offline mode (HF_HUB_OFFLINE=1), a 5xx,
# or a download that lost the Hub half-way (LocalEntryNotFoundError, RevisionResolutionError).
_UNREACHABLE = (
    httpx2.TransportError,
    OfflineModeIsEnabled,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RevisionResolutionError,
)


class HubError(RuntimeError):
    """A catalogue could not be pushed to or fetched from the Hub; the message names repo, revision and the fix."""


class HubUnavailable(HubError):
    """The Hub cannot be reached and no complete copy of the requested revision is cached."""


class CatalogNotFound(HubError):
    """The Hub answered: no such repo (or no access to it), or no such revision."""


@dataclass(frozen=True)
class PushResult:
    commit_sha: str  # head of main after the push
    catalog_value: str  # "OWNER/NAME@<commit_sha>", the exact FASHION_CATALOG value
    created_commit: bool  # False when the bundle was already there, unchanged


def parse_catalog_spec(spec: str) -> tuple[str, str | None]:
    """Split "OWNER/NAME" or "OWNER/NAME@REVISION" into (repo_id, revision or None)."""
    match = _SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None or any("--" in part or ".." in part for part in match.groups()[:2]):
        raise ValueError(
            f"Catalogue {spec!r} is not a Hub dataset reference: use OWNER/NAME or OWNER/NAME@REVISION "
            "(REVISION a commit sha or branch), e.g. the FASHION_CATALOG value printed by precompute.py --push-to-hub."
        )
    owner, name, revision = match.groups()
    return f"{owner}/{name}", revision


def push_bundle(
    bundle_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Upload a bundle folder to the dataset repo `repo_id` (created if missing) and return the commit to pin.

    Files that are not in `bundle_dir` are deleted from the repo's images/ so a shrunk catalogue leaves no stale
    images; README.md and .gitattributes are left alone. An unchanged bundle makes no commit.

    Args:
        token: a Hub token; None uses HF_TOKEN or the login saved by `hf auth login`.
        endpoint: the Hub URL; None uses HF_ENDPOINT / huggingface.co.
    """
    bundle_dir = Path(bundle_dir)
    parsed_id, revision = parse_catalog_spec(repo_id)
    if revision is not None:
        raise ValueError(f"Push to a repo, not a revision: got {repo_id!r}, expected OWNER/NAME.")
    if not (bundle_dir / MANIFEST).is_file():
        raise ValueError(f"{bundle_dir} has no {MANIFEST}: it is not a finished bundle. Build it with precompute.py.")

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(parsed_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    before = api.repo_info(parsed_id, repo_type=REPO_TYPE)
    if private and not before.private:
        logger.warning(
            "Dataset repo %s already exists and is public; --private does not change that. "
            "Make it private in the repo settings on the Hub if it should be.",
            parsed_id,
        )
    commit = api.upload_folder(
        repo_id=parsed_id,
        repo_type=REPO_TYPE,
        folder_path=bundle_dir,
        commit_message=f"Upload catalogue bundle from {bundle_dir.name}",
        delete_patterns=[f"{IMAGES}/*"],
    )
    created = commit.oid != before.sha
    logger.info("%s %s at commit %s", "Pushed" if created else "Unchanged:", parsed_id, commit.oid)
    return PushResult(commit_sha=commit.oid, catalog_value=f"{parsed_id}@{commit.oid}", created_commit=created)


def fetch_bundle(
    spec: str,
    *,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download the bundle named by `spec` ("OWNER/NAME[@REVISION]") and return its local folder.

    The folder is `<cache_dir>/bundles/datasets--OWNER--NAME/<commit sha>/` and holds real files (no symlinks into
    a blob store), so Gradio can serve images/ from it. A branch such as main is resolved to its commit first, so
    a folder never mixes two revisions. When the Hub cannot be reached, the cached copy of the revision is used
    (for a branch: the commit it pointed to at the last successful fetch) and a warning says so.

    Args:
        cache_dir: where to keep downloads; default `$HF_HOME/fashion-search`.
        token: for private repos; None uses HF_TOKEN or the saved login.
        endpoint: the Hub URL; None uses HF_ENDPOINT / huggingface.co.

    Raises:
        HubUnavailable: the Hub cannot be reached and that revision is not (completely) cached.
        CatalogNotFound: the Hub says the repo or revision does not exist, or the token gives no access.
    """
    repo_id, revision = parse_catalog_spec(spec)
    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HOME) / "fashion-search"
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{repo_id}@{revision or constants.DEFAULT_REVISION}"
    try:
        # Asking for the repo info first is what tells "the Hub is away" apart from "nothing needed downloading":
        # a commit sha that is already cached would otherwise be served without any request at all.
        api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision)
        folder = _download(api, repo_id, revision, root, local_files_only=False)
        _prune_older_revisions(folder)
        return folder
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise CatalogNotFound(
            f"The Hub at {api.endpoint} has no dataset {where} you can read ({type(err).__name__}). Check the "
            "FASHION_CATALOG value (precompute.py --push-to-hub prints it) and, for a private repo, set HF_TOKEN."
        ) from err
    except _UNREACHABLE as err:
        if isinstance(err, HfHubHTTPError) and err.response.status_code < 500:
            raise  # the Hub answered, with something else than "not found" (e.g. a bad token): not a cache matter
        hub_error = err
    try:
        folder = _download(api, repo_id, revision, root, local_files_only=True)
    except (RevisionResolutionError, LocalEntryNotFoundError) as err:  # IncompleteSnapshotError is a LocalEntry...
        raise HubUnavailable(
            f"Cannot reach the Hub at {api.endpoint} to download the catalogue {where} "
            f"({type(hub_error).__name__}: {hub_error}), and no complete copy of it is cached in {root}. "
            "Check the network, HF_ENDPOINT and HF_TOKEN, and start once with the Hub reachable to fill the cache."
        ) from err
    logger.warning(
        "Cannot reach the Hub at %s (%s: %s); serving the cached copy of %s at commit %s from %s.",
        api.endpoint, type(hub_error).__name__, hub_error, where, folder.name, folder,
    )
    return folder


def _download(api: HfApi, repo_id: str, revision: str | None, root: Path, *, local_files_only: bool) -> Path:
    """Resolve `revision` to a commit and snapshot it into a folder named after that commit.

    Everything offline comes from huggingface_hub: the branch -> commit refs under root/hub (written by
    resolve_revision) and the local_dir's own download metadata and tree listing (written by snapshot_download).
    """
    library_cache = root / "hub"
    resolved = api.resolve_revision(
        repo_id, repo_type=REPO_TYPE, revision=revision, cache_dir=library_cache, local_files_only=local_files_only
    )
    owner, name = repo_id.split("/")
    local_dir = root / "bundles" / f"datasets--{owner}--{name}" / resolved.resolved
    path = snapshot_download(
        repo_id,
        repo_type=REPO_TYPE,
        revision=resolved,
        cache_dir=library_cache,
        local_dir=local_dir,
        ignore_patterns=_NOT_BUNDLE,
        local_files_only=local_files_only,
        token=api.token,
        endpoint=api.endpoint,
    )
    logger.info("Catalogue %s@%s is in %s", repo_id, resolved.resolved, path)
    return Path(path)


def _prune_older_revisions(current: Path) -> None:
    """Mark `current` as just used; delete all but the KEEP_REVISIONS most recently used revisions beside it."""
    os.utime(current)
    others = [folder for folder in current.parent.iterdir() if folder.is_dir() and folder != current]
    others.sort(key=lambda folder: folder.stat().st_mtime_ns, reverse=True)
    for folder in others[KEEP_REVISIONS - 1 :]:
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("Removed the cached catalogue revision %s (kept the %d most recently used).", folder, KEEP_REVISIONS)
