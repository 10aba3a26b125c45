"""A living catalogue: the source's head looked at every FASHION_REFRESH seconds, a new revision loaded, checked and
warmed beside the one being served, then swapped in by one assignment; an old revision's files are released when
the last request using it is done.

    source = HubSource("OWNER/NAME")         # or FolderSource("bundles/shop"), MountSource("/data/catalogue", cache)
    revision = source.head()                 # one request to the Hub; a folder: its manifest's (or head file's) digest
    bundle, images = source.load(revision)   # fetched (a Hub commit) and verified, as a start does
    follower = Follower(recommender, source, every=60, search="auto").start()

Sources are looked at, never written. A Hub branch (`OWNER/NAME`, `OWNER/NAME@<branch>`) moves when a push lands; a
commit (`OWNER/NAME@<sha>`) never does; a mounted repo (a folder holding `catalogue.json`) moves when its head file
does, and its pieces may arrive after it. A bundle folder moves when precompute.py swaps a new bundle in (one rename);
each revision of it is read through a handle on the folder it was loaded from, so that its pictures stay readable
after the next swap (precompute.py keeps the previous folder aside until the build after).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import shutil
import threading
import time
import weakref
from pathlib import Path

from fashion_search.bundle import MANIFEST, Bundle, BundleError
from fashion_search.images import CatalogueImages, load_catalogue

log = logging.getLogger(__name__)


# A replaced revision is kept this long at least, so that the pictures of the answers it gave just before the swap
# can still be fetched (a browser and gradio_client ask for them after the answer); then it goes with its last user.
RETIRED_SECONDS = 30.0
# How long a mounted catalogue's new head may name pieces that have not all arrived (or do not hash right yet) before
# it is refused: a mount brings a commit's files one at a time (hf-mount looks every 30 s; a file can be stale 10 s).
ARRIVAL_SECONDS = 300.0


class SourceUnavailable(RuntimeError):
    """The head could not be read now (the Hub away, a folder between two renames): look again later."""


class Source:
    """Where the revisions of a catalogue come from."""

    name: str  # the FASHION_CATALOG value
    follows = True  # False: its head never moves (a pinned commit)

    def head(self) -> str:
        """The revision the source is at now. Raises SourceUnavailable."""
        raise NotImplementedError

    def load(self, revision: str) -> tuple[Bundle, CatalogueImages]:
        """That revision, loaded and verified. Raises BundleError (refused), SourceUnavailable (try again later)."""
        raise NotImplementedError

    def release(self, revision: str) -> None:
        """No snapshot serves `revision` any more: its files may go."""

    def same(self, revision: str, current: str) -> bool:
        """Whether `revision` holds the very catalogue `current` does (a commit of a push that has not moved the head
        file yet, or one that only deletes unused files): then there is nothing to take."""
        return False

    def shown(self, message: str) -> str:
        """A message about a loaded revision, with the paths a person knows."""
        return message

    def arriving(self, revision: str) -> bool:
        """Whether a revision that failed a check may still be arriving (a mount's files come one at a time): then
        it is looked at again rather than refused."""
        return False


class HubSource(Source):
    """A Hub dataset's branch (or a commit it pins), fetched into the one-copy cache (fashion_search.hub)."""

    def __init__(
        self,
        spec: str,
        cache_dir: str | Path | None = None,
        hub_cache: str | Path | None = None,
        endpoint: str | None = None,
    ):
        from fashion_search import hub  # huggingface_hub loads only for a Hub catalogue
        from fashion_search.config import parse_hub_spec

        self._hub = hub
        self.name = spec
        self._cache = {"cache_dir": cache_dir, "hub_cache": hub_cache}
        self._endpoint = endpoint  # None: HF_ENDPOINT, as huggingface_hub reads it
        _, revision = parse_hub_spec(spec)
        self.follows = not (revision is not None and hub.is_commit(revision))

    def head(self) -> str:
        try:
            return self._hub.head_commit(self.name, endpoint=self._endpoint)
        except self._hub.HubError as exc:  # away, or (for now) no such branch or no access: look again later
            raise SourceUnavailable(str(exc)) from exc

    def first(self) -> tuple[Path, str]:
        """(the folder, the commit) a start serves: fetch_bundle's, which falls back to the cache without the Hub."""
        folder = self._hub.fetch_bundle(self.name, endpoint=self._endpoint, **self._cache)
        return folder, folder.name

    def load(self, revision: str) -> tuple[Bundle, CatalogueImages]:
        try:
            folder = self._hub.fetch_commit(self.name, revision, endpoint=self._endpoint, **self._cache)
        except self._hub.HubError as exc:
            raise SourceUnavailable(str(exc)) from exc
        return load_catalogue(folder)

    def release(self, revision: str) -> None:
        self._hub.release_commit(self.name, revision, **self._cache)

    def same(self, revision: str, current: str) -> bool:
        try:  # the head files of both: one small download for the new commit, the current one's is cached
            ours = self._hub.head_file(self.name, current, endpoint=self._endpoint, **self._cache)
            return ours is not None and ours == self._hub.head_file(
                self.name, revision, endpoint=self._endpoint, **self._cache
            )
        except self._hub.HubError:
            return False  # asked again when it is taken


class FolderSource(Source):
    """A bundle folder that precompute.py updates; its revision is its manifest's digest."""

    def __init__(self, path: str | Path):
        self.name = str(path)
        self.path = Path(path).expanduser()
        self._handles: dict[str, int] = {}  # revision -> an open handle on the folder it was loaded from
        self._lock = threading.Lock()

    def head(self) -> str:
        try:
            return manifest_digest(self.path)
        except OSError as exc:  # e.g. between the two renames of a swap
            raise SourceUnavailable(f"{self.path / MANIFEST} cannot be read now ({exc.strerror or exc}).") from exc

    def load(self, revision: str) -> tuple[Bundle, CatalogueImages]:
        try:
            handle = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise SourceUnavailable(f"{self.path} cannot be opened now ({exc.strerror or exc}).") from exc
        try:
            root = _handle_path(handle, self.path)
            if manifest_digest(root) != revision:  # swapped again since the head was read
                raise SourceUnavailable(f"{self.path} changed while it was being loaded.")
            try:
                loaded = load_catalogue(root, revision)
            except BundleError as exc:
                raise type(exc)(str(exc).replace(str(root), str(self.path))) from exc
        except BaseException:
            os.close(handle)
            raise
        with self._lock:
            if revision in self._handles:  # loaded again (e.g. back to an earlier bundle): one handle is enough
                os.close(self._handles.pop(revision))
            self._handles[revision] = handle
        return loaded

    def release(self, revision: str) -> None:
        with self._lock:
            handle = self._handles.pop(revision, None)
        if handle is not None:
            os.close(handle)

    def shown(self, message: str) -> str:
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            message = message.replace(str(_handle_path(handle, self.path)), str(self.path))
        return message


class MountSource(Source):
    """A catalogue's Hub repo mounted as a folder (a Space volume over hf-mount, or any copy of the repo's files):
    `catalogue.json` and the pieces it names, read where they are. Its revision is its head file's digest.

    A mount brings a new commit's files one at a time, and a file may be stale for a while: a head naming a piece that
    is not there yet, or does not hash right yet, is "not yet" (SourceUnavailable: keep serving, look again) for
    `arrival` seconds after that head was first seen, and refused like a tampered revision after. Each revision is
    put together, as from the Hub (fashion_search.revisions.assemble_pieces), in a small folder under `cache`; the
    mount is never written. A start does not read every byte: a piece's listing and index rows are checked when it is
    put together, its vectors and images row by row as they are first read (a damaged one fails the request that
    read it, with a clear message, and is logged).
    """

    def __init__(self, path: str | Path, cache: str | Path, arrival: float = ARRIVAL_SECONDS):
        self.name = str(path)
        self.path = Path(path).expanduser()
        self.arrival = arrival
        slug = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:16]
        self.folders = Path(cache) / "mounts" / f"{self.path.name}-{slug}"  # a revision's folder: <revision>/
        self._first_seen: dict[str, float] = {}

    def head(self) -> str:
        from fashion_search.pieces import HEAD

        try:
            return hashlib.sha256((self.path / HEAD).read_bytes()).hexdigest()[:16]
        except OSError as exc:
            raise SourceUnavailable(f"{self.path / HEAD} cannot be read now ({exc.strerror or exc}).") from exc

    def load(self, revision: str) -> tuple[Bundle, CatalogueImages]:
        from fashion_search import pieces, revisions

        folder = self.folders / revision
        first = self._first_seen.setdefault(revision, time.monotonic())
        try:
            if not revisions.is_complete(folder):
                data = (self.path / pieces.HEAD).read_bytes()
                if hashlib.sha256(data).hexdigest()[:16] != revision:
                    raise SourceUnavailable(f"{self.path / pieces.HEAD} changed while it was being read.")
                head = pieces.parse_head(data, self.name)
                revisions.assemble_pieces(self.path, head, self.name, revision, folder, lazy=True)
            return load_catalogue(folder)
        except (BundleError, OSError) as exc:
            if time.monotonic() - first < self.arrival:
                waited = time.monotonic() - first
                raise SourceUnavailable(f"not complete yet after {waited:.0f} s ({exc})") from exc
            if isinstance(exc, OSError):
                raise BundleError(f"{self.name}: {exc}") from exc
            raise

    def arriving(self, revision: str) -> bool:
        return time.monotonic() - self._first_seen.get(revision, time.monotonic()) < self.arrival

    def first(self, wait: float = 5.0) -> tuple[str, Bundle, CatalogueImages]:
        """(revision, bundle, images) a start serves: the head, once all it names has arrived (up to `arrival`
        seconds). Raises BundleError (refused), SourceUnavailable (no head)."""
        while True:
            revision = self.head()
            try:
                loaded = (revision, *self.load(revision))
            except SourceUnavailable as exc:
                log.warning("Catalogue %s: revision %s %s; waiting.", self.name, _short(revision), exc)
                time.sleep(wait)
                continue
            for folder in self.folders.iterdir():  # the revisions an earlier run left
                if folder.name != revision:
                    shutil.rmtree(folder, ignore_errors=True)
            return loaded

    def release(self, revision: str) -> None:
        from fashion_search import revisions

        shutil.rmtree(self.folders / revision, ignore_errors=True)
        revisions.prune_piece_checks(self.folders)  # the checks of pieces no revision kept names


def _handle_path(handle: int, path: Path) -> Path:
    """A path to the folder open as `handle`, whatever it has been renamed to since (Linux); else the path itself."""
    proc = Path(f"/proc/self/fd/{handle}")
    return proc if proc.is_dir() else path


def manifest_digest(folder: Path) -> str:
    """A bundle folder's revision: the first 16 hex digits of its manifest's sha256 (the manifest hashes the rest)."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()[:16]


class Follower:
    """Looks at `source`'s head every `every` seconds and swaps a new revision into `recommender` once it is loaded,
    checked and warmed; a revision that fails a check is refused with one log line, and the old one keeps serving."""

    def __init__(self, recommender, source: Source, every: float, search: str = "auto", grace: float = RETIRED_SECONDS):
        self.recommender = recommender
        self.grace = grace  # seconds a replaced snapshot is kept at least
        self.source = source
        self.every = every
        self.search = search
        self.refused: dict[str, str] = {}  # revision -> why; not tried again (a later head is)
        self.same: set[str] = set()  # revisions that hold the catalogue being served: nothing to take
        self._stop = threading.Event()
        self._next_look = 0.0  # when the thread looks again
        self._unavailable = False  # the last look failed: said once, not at every look
        self._users: dict[str, int] = {}  # revision -> live snapshots of it (released at 0)
        self._retired: list[tuple[float, object]] = []  # (until when, a replaced snapshot): RETIRED_SECONDS
        self._freed = False  # a revision was released since the follower last handed free memory back
        self._lock = threading.Lock()
        self._track(recommender.snapshot)

    def start(self) -> Follower:
        threading.Thread(target=self._run, name="catalogue-follower", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(self.every, max(self.grace, 1.0))):
            self._retire()
            if self._freed:  # here, not in _let_go: a finalizer runs before the snapshot's contents are freed
                self._freed = False
                release_free_memory()
            if time.monotonic() < self._next_look:
                continue
            try:
                self.check()
            except Exception:  # never let the follower die: the app keeps serving what it has
                log.exception("Catalogue %s: looking for a new revision failed", self.source.name)

    def _retire(self) -> None:
        """Let go of the replaced snapshots whose grace is over (each then goes when its last request is done)."""
        now = time.monotonic()
        self._retired = [(until, snapshot) for until, snapshot in self._retired if until > now]

    def check(self) -> bool:
        """One look at the head; True if a new revision is now served."""
        self._next_look = time.monotonic() + self.every
        self._retire()
        current = self.recommender.snapshot.revision
        try:
            head = self.source.head()
        except SourceUnavailable as exc:
            if not self._unavailable:
                log.warning(
                    "Catalogue %s: cannot look for a new revision (%s); still serving %s.",
                    self.source.name,
                    exc,
                    _short(current),
                )
            self._unavailable = True
            return False
        self._unavailable = False
        if head == current or head in self.refused or head in self.same:
            return False
        if self.source.same(head, current):
            self.same.add(head)
            log.info(
                "Catalogue %s: %s holds the revision served (%s); nothing to take.",
                self.source.name,
                _short(head),
                _short(current),
            )
            return False
        return self._take(head, current)

    def _take(self, revision: str, current: str) -> bool:
        from fashion_search.approximate import IndexFileError
        from fashion_search.snapshot import open_snapshot, warm

        started = time.perf_counter()
        old = self.recommender.snapshot
        try:
            bundle, images = self.source.load(revision)
            snapshot = open_snapshot(
                self.recommender.embedder,
                bundle,
                images,
                search=self.search,
                source=old.info.source,
                name=old.info.name,
                revision=revision,
            )
            warm(snapshot)
        except SourceUnavailable as exc:
            log.warning(
                "Catalogue %s: revision %s not loaded yet (%s); still serving %s.",
                self.source.name,
                _short(revision),
                exc,
                _short(current),
            )
            return False
        except (BundleError, IndexFileError, OSError, ValueError) as exc:
            if self.source.arriving(revision):  # found as the new revision was warmed: perhaps not all there yet
                log.warning(
                    "Catalogue %s: revision %s not complete yet (%s); still serving %s.",
                    self.source.name,
                    _short(revision),
                    self.source.shown(str(exc)),
                    _short(current),
                )
                return False
            self.refused[revision] = self.source.shown(str(exc))
            self.source.release(revision)
            log.error(
                "Catalogue %s: revision %s refused, still serving %s: %s",
                self.source.name,
                _short(revision),
                _short(current),
                self.refused[revision],
            )
            return False
        self._track(snapshot)
        self.recommender.swap(snapshot)
        if self.grace > 0:
            self._retired.append((time.monotonic() + self.grace, old))
        log.info(
            "Catalogue %s: serving revision %s (%s products; was %s, %s products), loaded in %.1f s.",
            self.source.name,
            _short(revision),
            f"{snapshot.info.count:,}",
            _short(current),
            f"{old.info.count:,}",
            time.perf_counter() - started,
        )
        return True

    def _track(self, snapshot) -> None:
        """Release the revision's files once no snapshot of it is left (the last request using it is done)."""
        with self._lock:
            self._users[snapshot.revision] = self._users.get(snapshot.revision, 0) + 1
        weakref.finalize(snapshot, self._let_go, snapshot.revision)

    def _let_go(self, revision: str) -> None:
        with self._lock:
            self._users[revision] -= 1
            if self._users[revision]:
                return
            del self._users[revision]
        self._freed = True  # the follower's next wake-up hands the revision's freed memory back (release_free_memory)
        try:
            self.source.release(revision)
        except Exception as exc:  # disk left behind is no reason to stop serving
            log.warning("Catalogue %s: could not remove revision %s: %s", self.source.name, _short(revision), exc)


def release_free_memory() -> None:
    """Give the memory glibc's malloc holds free back to the system (malloc_trim(0); elsewhere nothing).

    A replaced revision's objects go back to glibc's malloc arenas (one per thread that allocated them), which keep free
    memory for reuse rather than return it: before this, anonymous memory stayed higher after every swap (200k products:
    971 -> 1,280 -> 1,549 -> 1,618 MB over three). Here each call gave 8-147 MB back (benchmarks/RESULTS.md, figure 9).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator returns memory its own way
        pass


def _short(revision: str) -> str:
    return revision[:12]
