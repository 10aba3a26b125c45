"""Hub transfer: push a catalogue bundle to a Hugging Face dataset repo, fetch a pinned revision of it back.

    result = push_bundle("bundle/", "OWNER/NAME")            # token from HF_TOKEN or `hf auth login`
    print(result.catalogue_value)                               # OWNER/NAME@<commit sha>: set it as FASHION_CATALOG
    print(preload_front_matter(result))                         # the Space README's preload_from_hub entry
    root = fetch_bundle("OWNER/NAME@<commit sha>")            # its folder: images.load_catalogue(root), one copy

On the Hub a catalogue is a dataset of pieces (fashion_search.pieces), a bounded number of files whatever the number
of products, and a change sends and downloads only its new pieces:
    README.md            the dataset card (licence, tags, size, `configs` naming the pieces' images), by the push
    catalogue.json       the head: the revision's pieces and the products removed from them
    pieces/<id>/...      images.tar (WebDataset), vectors.npy, rows.json, and the index's rows
    index/<key>/...      the approximate index's shared files
Revisions pushed by earlier versions (shards.json and shards/<id>.tar beside the bundle's data files, or one file per
image) are fetched as they are.

The Hub endpoint is the library's: HF_ENDPOINT (read when huggingface_hub is imported) unless `endpoint=` is given.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its TransportError is how "the Hub cannot be reached" surfaces
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    RepoFile,
    constants,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)

from fashion_search import approximate, pieces
from fashion_search.bundle import (
    DATA_FILES,
    IMAGES,
    MANIFEST,
    Bundle,
    load_bundle,
)
from fashion_search.config import parse_hub_spec
from fashion_search.files import sha256_file
from fashion_search.revisions import (
    REPO_TYPE,
    SHARD_INDEX,
    assemble,
    forget,
    keep,
    local_revision,
    manifest_files,
    revision_folder,
    shard_paths,
)

logger = logging.getLogger(__name__)

CARD = "README.md"
MAX_COMMIT_FILES = 100  # the Hub's limit on the files of one commit made over HTTP
PIECES_PER_COMMIT = 10  # each commit of pieces (5 files or fewer each) is a point a killed push resumes from
HELD_PIECES = 2  # a change of at most this many new pieces is one commit, with the head
_COMMIT = re.compile(r"[0-9a-f]{40}")
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


class CatalogueNotFound(HubError):
    """The Hub answered: no such repo (or no access to it), or no such revision."""


@dataclass(frozen=True)
class PushResult:
    commit_sha: str  # head of main after the push
    catalogue_value: str  # "OWNER/NAME@<commit_sha>", the exact FASHION_CATALOG value
    created_commit: bool  # False when the bundle was already there, unchanged
    preload_entry: str  # the Space README's preload_from_hub item for this commit (hub.preload_entry)


def push_bundle(
    bundle_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    license: str = "unknown",
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Upload a bundle to the dataset repo `repo_id` (created if missing) and return the commit to pin.

    The catalogue travels as pieces (fashion_search.pieces): the products the repo's head holds unchanged stay where
    they are, sold-out ones are recorded in the head, new and changed ones go into new pieces, sent PIECES_PER_COMMIT
    to a commit (a push that is killed and run again sends none of those twice); then one commit with the head, the
    dataset card and the index's shared files, which also deletes the files neither it nor the head before names.
    Every commit holds at most MAX_COMMIT_FILES files. An unchanged bundle makes no commit. A repo in an earlier
    layout (shards, or one file per image) gets all its products as new pieces, once.

    Args:
        license: the dataset card's licence, a Hub licence id ("mit", "cc-by-4.0", ..., "other", "unknown").
        token: a Hub token; None uses HF_TOKEN or the login saved by `hf auth login`.
        endpoint: the Hub URL; None uses HF_ENDPOINT / huggingface.co.

    Raises:
        ValueError: not OWNER/NAME, or not a bundle folder.
        BundleError: a bundle the app would refuse (it is loaded and verified first); nothing is sent.
    """
    bundle_dir = Path(bundle_dir)
    parsed_id, revision = parse_hub_spec(repo_id)
    if revision is not None:
        raise ValueError(f"Push to a repo, not a revision: got {repo_id!r}, expected OWNER/NAME.")
    if not (bundle_dir / MANIFEST).is_file():
        raise ValueError(f"{bundle_dir} has no {MANIFEST}: it is not a finished bundle. Build it with precompute.py.")
    bundle = load_bundle(bundle_dir)
    index = approximate.load(bundle.root, bundle.embeddings) if bundle.has_index else None

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(parsed_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    before = api.repo_info(parsed_id, repo_type=REPO_TYPE)
    if private and not before.private:
        logger.warning(
            "Dataset repo %s already exists and is public; --private does not change that. "
            "Make it private in the repo settings on the Hub if it should be.",
            parsed_id,
        )
    tree = {
        entry.path
        for entry in api.list_repo_tree(parsed_id, repo_type=REPO_TYPE, revision=before.sha, recursive=True)
        if isinstance(entry, RepoFile)
    }
    head = before.sha
    with tempfile.TemporaryDirectory(prefix=".push-", dir=bundle_dir.parent) as tmp:
        previous, remote = _remote_head(api, parsed_id, before.sha, tree, bundle, Path(tmp) / "cache")
        plan = pieces.plan_push(bundle, previous, remote, index.data if index else None)
        if previous is None and tree - {CARD, ".gitattributes"}:
            logger.info("%s is in an earlier layout: this push sends the whole catalogue once, as pieces.", parsed_id)
        # A day's change (a piece or two) goes in one commit with the head: a following app sees the branch move
        # once. A larger one sends its pieces first, PIECES_PER_COMMIT to a commit, so that a killed push resumes.
        files_sent = 5 * len(plan.new) + (2 * len(plan.kept) if plan.reindex else 0)
        hold = len(plan.new) <= HELD_PIECES and files_sent <= MAX_COMMIT_FILES // 2
        kept, held, head = _send_index_rows(api, parsed_id, plan, index, tree, Path(tmp), head, hold)
        new, held_pieces, head = _send_pieces(
            api, parsed_id, bundle, bundle_dir, plan, index, tree, Path(tmp), head, hold
        )
        shared = pieces.index_files(index.data, bundle.root) if index else {}
        files = bundle.manifest["files"]
        after = pieces.new_head(bundle, kept + new, {path: files[local.name] for path, local in shared.items()})
        needed = [pieces.HEAD, *after.files()]  # what fetch_bundle downloads
        if previous is not None and (after.pieces, after.index) == (previous.pieces, previous.index):
            logger.info("Unchanged: %s at commit %s", parsed_id, head)
            return PushResult(head, f"{parsed_id}@{head}", head != before.sha, preload_entry(parsed_id, head, needed))
        adds = [
            *held,
            *held_pieces,
            CommitOperationAdd(pieces.HEAD, after.to_bytes()),
            CommitOperationAdd(CARD, dataset_card(bundle, parsed_id, len(after.pieces), license).encode()),
            *(CommitOperationAdd(path, local) for path, local in shared.items() if path not in tree),
        ]
        # Deleted: what neither this head nor the one before names (an app reading the revision before keeps its
        # files for one more push). Over a repo of an earlier layout, its files are the ones "the head before" names.
        named = set(after.files()) | (set(previous.files()) if previous is not None else tree)
        stale = sorted(tree - named - {pieces.HEAD, CARD, ".gitattributes"})
        deletions = [CommitOperationDelete(path) for path in stale]
        room = MAX_COMMIT_FILES - len(adds)
        message = f"Update catalogue from {bundle_dir.name}: {len(new)} new pieces, {after.count:,} products"
        head = _commit(api, parsed_id, adds + deletions[:room], message, head)
    for start in range(room, len(deletions), MAX_COMMIT_FILES):
        head = _commit(api, parsed_id, deletions[start : start + MAX_COMMIT_FILES], "Remove unused pieces", head)
    logger.info("Pushed %s at commit %s", parsed_id, head)
    return PushResult(
        commit_sha=head,
        catalogue_value=f"{parsed_id}@{head}",
        created_commit=True,
        preload_entry=preload_entry(parsed_id, head, needed),
    )


def _remote_head(
    api: HfApi, repo_id: str, sha: str, tree: set[str], bundle: Bundle, cache: Path
) -> tuple[pieces.Head | None, dict[str, pieces.PieceRows]]:
    """The repo's head at `sha` (None: no pieces there yet) and, when the bundle can join it, its pieces' rows."""
    if pieces.HEAD not in tree:
        return None, {}

    def download(path: str) -> Path:
        return Path(api.hf_hub_download(repo_id, path, repo_type=REPO_TYPE, revision=sha, cache_dir=cache))

    where = f"{repo_id}@{sha}"
    head = pieces.read_head(download(pieces.HEAD), where)
    if not head.compatible(bundle):
        logger.info("%s was made with another model: every product is sent again.", where)
        return head, {}
    rows = {piece.id: pieces.read_rows(download(piece.path(pieces.ROWS)), piece.rows, where) for piece in head.pieces}
    return head, rows


def _send_pieces(
    api: HfApi,
    repo_id: str,
    bundle: Bundle,
    bundle_dir: Path,
    plan: pieces.Plan,
    index,
    tree: set[str],
    tmp: Path,
    head: str,
    hold: bool,
) -> tuple[list[pieces.Piece], list[CommitOperationAdd], str]:
    """Write and commit the plan's new pieces, PIECES_PER_COMMIT at a time (those already on the Hub: not again);
    with `hold`, write them all and return their files' operations for the caller's commit instead."""
    made = []
    size = max(1, len(plan.new)) if hold else PIECES_PER_COMMIT
    for start in range(0, len(plan.new), size):
        group, adds = plan.new[start : start + size], []
        for number, rows in enumerate(group):
            piece, local = pieces.write_piece(bundle, rows, index, tmp / f"piece-{number}")
            made.append(piece)
            adds += [CommitOperationAdd(path, file) for path, file in local.items() if path not in tree]
        if hold:  # one group: its files stay for the caller's commit
            return made, adds, head
        if adds:
            message = f"Add pieces {start + 1}-{start + len(group)} of {len(plan.new)} from {bundle_dir.name}"
            head = _commit(api, repo_id, adds, message, head)
        logger.info("Sent %d of %d new pieces to %s", start + len(group), len(plan.new), repo_id)
        for number in range(len(group)):  # the next group's disk space
            shutil.rmtree(tmp / f"piece-{number}")
    return made, [], head  # (also with `hold` and no new piece)


def _send_index_rows(
    api: HfApi, repo_id: str, plan: pieces.Plan, index, tree: set[str], tmp: Path, head: str, hold: bool
) -> tuple[list[pieces.Piece], list[CommitOperationAdd], str]:
    """The kept pieces, with index rows made anew and committed when the index was trained again (or added or
    dropped): their images and vectors are not sent again. With `hold`, their operations are returned instead."""
    if not plan.reindex:
        return plan.kept, [], head
    kept, adds = [], []
    for piece, rows in zip(plan.kept, plan.kept_rows):
        files = {path: digest for path, digest in piece.files.items() if path not in (piece.index_files or ())}
        if index is not None:
            local = pieces.index_rows(piece, index, rows, tmp / f"index-{piece.id}")
            files |= {path: sha256_file(file) for path, file in local.items()}
            adds += [CommitOperationAdd(path, file) for path, file in local.items() if path not in tree]
        kept.append(dataclasses.replace(piece, files=files))
    if plan.kept:
        logger.info("The index was trained again: sending the index rows of %d pieces.", len(plan.kept))
    if hold:
        return kept, adds, head
    for start in range(0, len(adds), MAX_COMMIT_FILES):
        head = _commit(api, repo_id, adds[start : start + MAX_COMMIT_FILES], "Add index rows", head)
    return kept, [], head


def dataset_card(bundle: Bundle, repo_id: str, piece_count: int, license: str) -> str:
    """The repo's README.md: front matter for the Hub (licence, tags, size, the pieces as the data) and a short text."""
    count = len(bundle.filenames)
    return CARD_TEMPLATE.format(
        license=license,
        size=_size_category(count),
        pieces=pieces.PIECES,
        repo_id=repo_id,
        count=count,
        piece_count=piece_count,
        weights=bundle.weights,
        precision=bundle.precision,
        dim=bundle.manifest["dim"],
        metadata="one JSON object per product" if bundle.metadata is not None else "not included",
    )


CARD_TEMPLATE = """---
license: {license}
pretty_name: Fashion visual search catalogue
tags:
- fashion
- image-retrieval
- visual-search
- webdataset
task_categories:
- image-feature-extraction
size_categories:
- {size}
configs:
- config_name: default
  data_files:
  - split: train
    path: {pieces}/*/images.tar
---

# Fashion visual search catalogue

{count:,} product images and their ResNet50 embeddings, published by `precompute.py --push-to-hub` of the fashion
visual search app: upload a photo of a product, see the most similar products of this catalogue.

To serve it, set this in the app's (or the Space's) variables, pinned to a commit of this repo, e.g. the one
`precompute.py` printed: `FASHION_CATALOG={repo_id}@<commit sha>` (or `FASHION_CATALOG={repo_id}` to follow `main`).

- **Pieces**: {piece_count} in `{pieces}/`, each a WebDataset shard of product images (`images.tar`: per product an
  image and a JSON with its `filename` and metadata; `load_dataset("{repo_id}", split="train")` reads them), their
  embeddings (`vectors.npy`) and their file names, hashes and metadata (`rows.json`). `catalogue.json` names this
  revision's pieces with the sha256 of each file, and the products removed from them since (sold out): a shard can
  still hold a product the catalogue no longer has.
- **Embeddings**: ResNet50 (`include_top=False`, 224×224×3) with global max pooling, weights `{weights}`, computed in
  {precision}; {dim}-d unit vectors.
- **Metadata**: {metadata}.
"""


def fetch_bundle(
    spec: str,
    *,
    cache_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download the bundle named by `spec` ("OWNER/NAME[@REVISION]") and return its local folder.

    The revision's files stay as huggingface_hub downloads them, in its cache (`hub_cache`), where a Space's
    `preload_from_hub` puts them too: a revision found there complete is used without asking the Hub. The folder
    returned, `<cache_dir>/bundles/datasets--OWNER--NAME/<commit sha>/`, holds links to the data files and, for a
    revision in shards, where each image lies in them (fashion_search.images): every image is checked against the
    manifest's sha256 as the shards are read, once, before the folder appears; nothing is unpacked. A branch such as
    main is resolved to its commit first, so a folder never mixes two revisions; a commit already there is used as it
    is, without asking the Hub. When the Hub cannot be reached, the revision's folder (for a branch: the commit it
    pointed to at the last successful fetch) is used if it is complete, and a warning says so.

    Args:
        cache_dir: where to keep the revision folders; default `$HF_HOME/fashion-search`.
        hub_cache: huggingface_hub's cache; default its own (`$HF_HOME/hub`), or `<cache_dir>/hub` when
            `cache_dir` is given.
        token: for private repos; None uses HF_TOKEN or the saved login.
        endpoint: the Hub URL; None uses HF_ENDPOINT / huggingface.co.

    Raises:
        HubUnavailable: the Hub cannot be reached and that revision is not (completely) cached.
        CatalogueNotFound: the Hub says the repo or revision does not exist, or the token gives no access.
        BundleError: the revision's files do not make a bundle (e.g. an image that does not match the manifest, a
            shard that is not a plain tar of the manifest's images).
    """
    repo_id, revision = parse_hub_spec(spec)
    root, library_cache = cache_folders(cache_dir, hub_cache)
    api = HfApi(endpoint=endpoint, token=token)
    where = f"{repo_id}@{revision or constants.DEFAULT_REVISION}"
    if revision is not None and _COMMIT.fullmatch(revision):  # a commit never changes: no need to ask the Hub
        if (folder := local_revision(root, library_cache, repo_id, revision)) is not None:
            return keep(folder, library_cache, repo_id)
    try:
        # Asking for the repo info first is what tells "the Hub is away" apart from "nothing needed downloading";
        # it also checks that the token may read the repo, for a commit that is cached as for one that is not.
        sha = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision).sha
        return keep(_materialise(api, repo_id, revision, sha, root, library_cache), library_cache, repo_id)
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise CatalogueNotFound(
            f"The Hub at {api.endpoint} has no dataset {where} you can read ({type(err).__name__}). Check the "
            "FASHION_CATALOG value (precompute.py --push-to-hub prints it) and, for a private repo, set HF_TOKEN."
        ) from err
    except _UNREACHABLE as err:
        if isinstance(err, HfHubHTTPError) and err.response.status_code < 500:
            raise  # the Hub answered, with something else than "not found" (e.g. a bad token): not a cache matter
        hub_error = err
    unavailable = (
        f"Cannot reach the Hub at {api.endpoint} to download the catalogue {where} "
        f"({type(hub_error).__name__}: {hub_error}), and no complete copy of it is cached in {root}. "
        "Check the network, HF_ENDPOINT and HF_TOKEN, and start once with the Hub reachable to fill the cache."
    )
    try:
        sha = api.resolve_revision(
            repo_id, repo_type=REPO_TYPE, revision=revision, cache_dir=library_cache, local_files_only=True
        ).resolved
    except RevisionResolutionError as err:
        raise HubUnavailable(unavailable) from err
    folder = local_revision(root, library_cache, repo_id, sha)
    if folder is None:
        raise HubUnavailable(unavailable) from hub_error
    logger.warning(
        "Cannot reach the Hub at %s (%s: %s); serving the cached copy of %s at commit %s from %s.",
        api.endpoint,
        type(hub_error).__name__,
        hub_error,
        where,
        sha,
        folder,
    )
    return folder


def is_commit(revision: str) -> bool:
    """Whether a revision is a full commit sha (pinned: it never moves), not a branch or tag."""
    return bool(_COMMIT.fullmatch(revision))


def cache_folders(cache_dir: str | Path | None = None, hub_cache: str | Path | None = None) -> tuple[Path, Path]:
    """(where the revision folders are kept, huggingface_hub's cache), as fetch_bundle documents the defaults."""
    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HOME) / "fashion-search"
    if hub_cache is not None:
        return root, Path(hub_cache)
    return root, root / "hub" if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def head_commit(spec: str, *, token: str | None = None, endpoint: str | None = None) -> str:
    """The commit that `spec`'s branch (or the commit it pins) is at now: one request to the Hub, none for a commit.

    Raises:
        HubUnavailable: the Hub cannot be reached, or answers a server error.
        CatalogueNotFound: the Hub says the repo or the branch does not exist (or the token gives no access).
    """
    repo_id, revision = parse_hub_spec(spec)
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    api = HfApi(endpoint=endpoint, token=token)
    with _asking(api, spec):
        return api.repo_info(repo_id, repo_type=REPO_TYPE, revision=revision).sha


def fetch_commit(
    spec: str,
    sha: str,
    *,
    cache_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """The folder of commit `sha` of `spec`'s repo (head_commit's answer): from the cache when complete there, else
    downloaded (only the files the cache does not hold already) and checked as fetch_bundle does; the branch `spec`
    names is recorded as pointing to it, for a start without the Hub. Old revisions are left for `release_commit`.

    Raises:
        HubUnavailable, CatalogueNotFound: as head_commit.
        BundleError: the revision's files do not make a bundle.
    """
    repo_id, revision = parse_hub_spec(spec)
    root, library_cache = cache_folders(cache_dir, hub_cache)
    api = HfApi(endpoint=endpoint, token=token)
    with _asking(api, f"{repo_id}@{sha}"):
        return _materialise(api, repo_id, revision, sha, root, library_cache)


def head_file(
    spec: str,
    sha: str,
    *,
    cache_dir: str | Path | None = None,
    hub_cache: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> bytes | None:
    """The head file (catalogue.json) of commit `sha` of `spec`'s repo, from huggingface_hub's cache or downloaded
    into it; None for a revision without one (pushed before the pieces).

    Raises:
        HubUnavailable, CatalogueNotFound: as head_commit.
    """
    repo_id, _ = parse_hub_spec(spec)
    _, library_cache = cache_folders(cache_dir, hub_cache)
    api = HfApi(endpoint=endpoint, token=token)
    with _asking(api, f"{repo_id}@{sha}"):
        try:
            path = api.hf_hub_download(repo_id, pieces.HEAD, repo_type=REPO_TYPE, revision=sha, cache_dir=library_cache)
        except EntryNotFoundError:
            return None
    return Path(path).read_bytes()


@contextmanager
def _asking(api: HfApi, where: str):
    """The Hub's answers as HubErrors: CatalogueNotFound (it said no), HubUnavailable (it could not be asked)."""
    try:
        yield
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise CatalogueNotFound(f"The Hub at {api.endpoint} has no dataset {where} you can read.") from err
    except _UNREACHABLE as err:
        if isinstance(err, HfHubHTTPError) and err.response.status_code < 500:
            raise CatalogueNotFound(f"The Hub at {api.endpoint} refused {where}: {err}") from err
        raise HubUnavailable(f"Cannot reach the Hub at {api.endpoint} ({type(err).__name__}: {err}).") from err


def release_commit(spec: str, sha: str, *, cache_dir: str | Path | None = None, hub_cache: str | Path | None = None):
    """Delete commit `sha`'s folder and its files in huggingface_hub's cache (those no other revision holds): no
    snapshot serves it any more."""
    repo_id, _ = parse_hub_spec(spec)
    root, library_cache = cache_folders(cache_dir, hub_cache)
    forget(revision_folder(root, repo_id, sha), library_cache, repo_id)


def _materialise(api: HfApi, repo_id: str, branch: str | None, sha: str, root: Path, library_cache: Path) -> Path:
    if branch != sha:  # record where the branch pointed, for a start without the Hub (resolve_revision alone
        # would hide an unreachable Hub behind its own cached answer, so it comes after the repo info)
        api.resolve_revision(repo_id, repo_type=REPO_TYPE, revision=branch, cache_dir=library_cache)
    folder = local_revision(root, library_cache, repo_id, sha)
    if folder is None:
        folder = assemble(
            _download(api, repo_id, sha, library_cache), repo_id, sha, revision_folder(root, repo_id, sha)
        )
    return folder


def preload_front_matter(result: PushResult) -> str:
    """What to add to the front matter of a Space's README.md so the Space downloads the pushed revision when it is
    built (a Space whose README has `preload_from_hub:` already adds the item alone)."""
    return f"preload_from_hub:\n  - {result.preload_entry}"


def preload_entry(repo_id: str, commit_sha: str, files: Sequence[str]) -> str:
    """A Space README's `preload_from_hub:` item that downloads these files of the revision when the Space is built.

    The format of the Hub's Spaces configuration reference: `REPO FILE1,FILE2 COMMIT`, a dataset's repo written
    `datasets/OWNER/NAME`. The files land in huggingface_hub's default cache, where `fetch_bundle` finds them.
    """
    return f"datasets/{repo_id} {','.join(files)} {commit_sha}"


def _commit(api: HfApi, repo_id: str, operations: list, message: str, head: str) -> str:
    """One commit on top of `head` (so a repo changed meanwhile is refused, not overwritten); the new head."""
    return api.create_commit(repo_id, operations, repo_type=REPO_TYPE, commit_message=message, parent_commit=head).oid


def _size_category(count: int) -> str:
    """The Hub's size_categories value for `count` rows."""
    labels = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B"]
    for exponent, label in enumerate(labels, 3):
        if count < 10**exponent:
            return label
    return "n>1B"


def _download(api: HfApi, repo_id: str, sha: str, library_cache: Path) -> Path:
    """Download the files of revision `sha` the app needs into huggingface_hub's cache; the snapshot folder."""

    def snapshot(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                repo_type=REPO_TYPE,
                revision=sha,
                cache_dir=library_cache,
                allow_patterns=patterns,
                token=api.token,
                endpoint=api.endpoint,
            )
        )

    index = snapshot([pieces.HEAD])
    if (index / pieces.HEAD).is_file():
        head = pieces.read_head(index / pieces.HEAD, f"{repo_id}@{sha}")
        return snapshot([pieces.HEAD, *head.files()])
    index = snapshot([MANIFEST, SHARD_INDEX])  # a revision pushed before the pieces
    files = manifest_files(index, repo_id, sha)
    data = [name for name in DATA_FILES if name in files]
    # pushed by an earlier version without shards.json: one file per image
    shards = shard_paths(index, repo_id, sha) if (index / SHARD_INDEX).is_file() else [f"{IMAGES}/*"]
    return snapshot([MANIFEST, *data, *shards])
