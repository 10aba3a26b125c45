"""Figure 9: a living catalogue — `python app.py` following a Hub branch on the loopback stand-in takes each pushed
change live: how long after the push, with how much memory, and whether any request fails or mixes two revisions.

    python -m benchmarks --only 9                                  # 44k products, then the large run at 200k rows
    python -m benchmarks.bench_live --parts small                  # 44k only
    python -m benchmarks.bench_live --parts large --rows 1000000   # the large run at a million rows (an hour or more)

Each change is the issue's shop day: 1 % of the catalogue, rows/200 products sold out at random places and rows/220
new ones (220 and 200 at 44k), built as precompute.py would (the kept rows keep their vectors; at the large size the
approximate index is carried over with `approximate.update`), pushed with `hub.push_bundle` to the stand-in, which
app.py (FASHION_CATALOG=OWNER/NAME, FASHION_REFRESH=5) follows. Measured, each side by side with its target:

- the time from the push's return until a gradio_client query is answered from the pushed commit (every listing row
  carries "revision"), against 30 s + the refresh interval at 44k and 5 minutes at the large size; from the app's log,
  seen as it is written, when the revision had been fetched and checked and when it was swapped in;
- the app's anonymous memory (RssAnon, /proc/PID/status, every 0.2 s): steady before, the peak from the push until the
  replaced revision's files are released, and steady after; at 44k also over the same clients querying with no change
  pushed, to tell growth from requests apart from growth from swaps;
- the bytes each push sends and the bytes the following app downloads for it (the stand-in counts both), as a share of
  the revision's bytes on the Hub: whatever layout hub.push_bundle and the app's fetch use, nothing here assumes one
  (a commit a push made on the way is known by fetching it as the app does);
- at 44k, first one change with one client asking, then three with 4 gradio_client clients querying throughout (two
  /similar, two /recommend): failed requests, answers mixing revisions, answers naming a product that is not in the
  revision they name, and every /similar answer against a brute-force search (numpy, float64) over the vectors of the
  revision it names; after each swap, /similar of kept and new products against the same brute force, and of sold-out
  products, which must be refused. A failure is counted with where it was raised: a CancelledError gradio_client raises
  itself when the session's event stream closes under a request just sent is shown apart (the control has them too).

The vectors are grown as figure 8's (tests/big_catalogue.grown_vectors), from the tests' synthetic base of the same
shape (`structured_base`) rather than from embedded Fashion-MNIST pictures, so no model is needed to make them. They
are the model's 2,048-d: app.py's start-up query runs the model against the catalogue, so shorter vectors cannot be
served. Images are 16 tiny JPEGs hard-linked (a few hundred bytes each; Kaggle's are 20-30 KB), Kaggle-like metadata.
The app runs with `--weights random` (the catalogue says it was made so). Bundles are made once and cached.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import multiprocessing
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import numpy as np
from big_catalogue import grown_vectors, structured_base, tiny_jpeg  # tests/ is on the path (benchmarks/__init__.py)

from benchmarks import data, machine
from benchmarks.bench_hub import REPO, TOKEN, revision_bytes
from benchmarks.report import Row, ratio, verdict
from benchmarks.servers import client

SMALL = 44_000  # Kaggle's fashion-product-images-small
LARGE = 200_000  # the suite's large run; 1,000,000 by hand (--rows)
INDEX_ROWS = 100_000  # from this size the catalogue carries the approximate index, as precompute.py --index would
REFRESH = 5.0  # FASHION_REFRESH, seconds
SMALL_TARGET = 30.0  # seconds after the push, plus the refresh interval
LARGE_TARGET = 300.0
PEAK_TARGET = 2.5  # the swap's peak anonymous memory, times the steady
AFTER_TARGET = 1.1  # "back to steady": within 10 %
SWAPS_UNDER_LOAD = 3
LARGE_SWAPS = 3  # the first is the figure; the next two show whether the memory a swap leaves is reused
CLIENTS = 4
CONTROL_SECONDS = 180.0  # the clients querying with no change pushed: the failures the swaps are compared with
SAMPLE_EVERY = 0.2  # seconds between RssAnon samples
STEADY_SECONDS = 15.0  # RssAnon sampled this long for "steady" (the median)
RELEASE_TIMEOUT = 180.0  # the replaced revision is kept 30 s (live.RETIRED_SECONDS), then goes with its last user
CHECK_KEPT, CHECK_NEW, CHECK_GONE = 10, 5, 5  # /similar after each swap: kept and new products; sold-out ones
K = 5
BASE = 4_000  # base vectors the rows are grown from (as figure 8's 4,000 real ones)
FIRST_ID = 10_000
_VERSION = "v1"
SERVING = re.compile(r"serving revision ([0-9a-f]{12}) .*loaded in ([0-9.]+) s")
FETCHED = re.compile(r"Catalogue \S+@([0-9a-f]{40}) is in ")


def change_size(rows: int) -> tuple[int, int]:
    """(products sold out, products new) of a 1 % change: 220 and 200 at 44k."""
    return rows // 200, rows // 220


# ---------------------------------------------------------------- the catalogue's revisions


def revisions(rows: int, changes: int, log=print) -> list[Path]:
    """Local bundles rev0..rev<changes>, each the previous one changed by 1 % (cached)."""
    root = data.CACHE / f"live-{rows}-{_VERSION}"
    folders = [root / f"rev{i}" for i in range(changes + 1)]
    if not (folders[0] / "manifest.json").is_file():
        _first_revision(root, folders[0], rows, log)
    for before, after in zip(folders, folders[1:]):
        if not (after / "manifest.json").is_file():
            _changed_revision(root, before, after, int(after.name[3:]), log)
    return folders


def _pictures(root: Path) -> list[tuple[Path, str]]:
    from fashion_search.files import sha256_file

    folder = root / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(16):  # every product's picture is a hard link to one of 16 tiny JPEGs: little disk at any size
        path = folder / f"picture-{i}.jpg"
        if not path.is_file():
            path.write_bytes(tiny_jpeg(i))
        out.append((path, sha256_file(path)))
    return out


def _base() -> np.ndarray:
    return structured_base(BASE, 2048, seed=0)


def _write(staging: Path, final: Path, names, metadata, sources, vectors, index) -> None:
    from fashion_search import approximate
    from fashion_search.bundle import write_bundle
    from fashion_search.embedder import MODEL_DESCRIPTION
    from fashion_search.imaging import PREPROCESSING_ID

    index_files = approximate.write(staging, index) if index is not None else ()
    write_bundle(
        staging,
        embeddings=vectors,
        filenames=names,
        metadata=metadata,
        sources=sources,
        model={**MODEL_DESCRIPTION, "weights": "random:0"},  # what app.py --weights random runs
        preprocessing=PREPROCESSING_ID,
        index_files=index_files,
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def _first_revision(root: Path, folder: Path, rows: int, log) -> None:
    from fashion_search import approximate

    log(f"  making a {rows:,}-product catalogue in {folder} (once; cached) ...")
    started = time.perf_counter()
    pictures = _pictures(root)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names, metadata, sources = [], [], []
    for i in range(rows):
        names.append(f"{FIRST_ID + i}.jpg")
        picture, digest = pictures[i % len(pictures)]
        os.link(picture, staging / "images" / names[-1])
        metadata.append(data._styles_row(FIRST_ID + i, rng))
        sources.append(digest)
    vectors = grown_vectors(_base(), rows, seed=rows)
    index = approximate.train(vectors) if rows >= INDEX_ROWS else None
    _write(staging, folder, names, metadata, sources, vectors, index)
    log(f"  {time.perf_counter() - started:.0f} s")


def _changed_revision(root: Path, before: Path, folder: Path, number: int, log) -> None:
    """`before` with rows/200 products sold out at random rows and rows/220 new ones, as precompute.py re-run on the
    changed folder would write it: kept rows keep their vectors (and their list in the approximate index)."""
    from fashion_search import approximate
    from fashion_search.bundle import load_bundle

    log(f"  making revision {number} in {folder} (once; cached) ...")
    pictures = _pictures(root)
    previous = load_bundle(before, verify_images=False)
    n = len(previous.filenames)
    gone, new = change_size(n)
    rng = np.random.default_rng(1000 + number)
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n, gone, replace=False)] = False
    kept_rows = np.flatnonzero(keep)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    names = [previous.filenames[row] for row in kept_rows]
    for name in names:
        _link(before / "images" / name, staging / "images" / name, root)
    metadata = [previous.metadata[row] for row in kept_rows]
    sources = [previous.sources[row] for row in kept_rows]
    first = max(int(Path(name).stem) for name in previous.filenames) + 1
    for ident in range(first, first + new):
        names.append(f"{ident}.jpg")
        picture, digest = pictures[ident % len(pictures)]
        _link(picture, staging / "images" / names[-1], root)
        metadata.append(data._styles_row(ident, rng))
        sources.append(digest)
    vectors = np.concatenate([previous.embeddings[kept_rows], grown_vectors(_base(), new, seed=n * 10 + number)])
    index = None
    if (before / approximate.INFO).is_file():
        old_rows = np.concatenate([kept_rows, np.full(new, -1)])
        index = approximate.update(approximate.load(before, previous.embeddings).data, vectors, old_rows)
    _write(staging, folder, names, metadata, sources, vectors, index)


def _link(source: Path, target: Path, root: Path) -> None:
    """A hard link to `source`, or, when it has as many as its file system allows (65,000 on ext4: a million products
    share 16 pictures), to a copy of it kept for more links."""
    spares = (root / "pictures" / "spare" / f"{os.stat(source).st_ino}-{n}.jpg" for n in itertools.count())
    for candidate in itertools.chain([source], spares):
        if not candidate.exists():
            candidate.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, candidate)
        try:
            os.link(candidate, target)
            return
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise


@dataclass(eq=False)
class Revision:
    """What the benchmark knows of a local revision: its products and vectors (for the brute-force reference)."""

    folder: Path
    names: list[str]
    rows: dict[str, int]
    vectors: np.ndarray  # memory-mapped
    _truths: dict = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> Revision:
        from fashion_search.bundle import load_bundle

        bundle = load_bundle(folder, verify_images=False)  # the vectors stay memory-mapped
        names = bundle.filenames
        return cls(folder, names, {n: r for r, n in enumerate(names)}, bundle.embeddings)

    def nearest_others(self, name: str, k: int = K) -> list[tuple[str, float]]:
        """The brute-force /similar: the k nearest other products, float64 distances, ties to the lower row."""
        if (name, k) not in self._truths:
            row = self.rows[name]
            query = np.asarray(self.vectors[row])
            # Every row scored in float32 (a matmul), then the 64 nearest measured again in float64 and sorted: a
            # float32 error (~1e-6) cannot push one of the true k nearest below 64 others.
            scores = np.empty(len(self.names), dtype=np.float32)
            for start in range(0, len(self.names), 65536):
                block = np.asarray(self.vectors[start : start + 65536])
                scores[start : start + len(block)] = np.einsum("ij,ij->i", block, block) - 2 * (block @ query)
            scores[row] = np.inf
            candidates = np.sort(np.argpartition(scores, 64)[:64])
            exact = np.asarray(self.vectors[candidates], dtype=np.float64) - query.astype(np.float64)
            distances = np.sqrt((exact**2).sum(axis=1))
            best = candidates[np.argsort(distances, kind="stable")[:k]]
            found = dict(zip(candidates.tolist(), distances.tolist()))
            self._truths[(name, k)] = [(self.names[i], found[i]) for i in best.tolist()]
        return self._truths[(name, k)]


def agreement(listing: list[dict], truth: list[tuple[str, float]]) -> str:
    """'equal', 'tie' (the same distances, products swapped only between equal distances), or 'differs'."""
    got = [(row["filename"], row["distance"]) for row in listing]
    if [name for name, _ in got] == [name for name, _ in truth] and all(
        abs(a - b) <= 2e-6 for (_, a), (_, b) in zip(got, truth)
    ):
        return "equal"
    if len(got) == len(truth) and all(abs(a - b) <= 2e-6 for (_, a), (_, b) in zip(got, truth)):
        return "tie"
    return "differs"


# ---------------------------------------------------------------- watching the app


class Sampler:
    """RssAnon of a process every SAMPLE_EVERY seconds, and its log's lines with the time each was first seen."""

    def __init__(self, pid: int, log_path: Path):
        self.pid, self.log_path = pid, log_path
        self.memory: list[tuple[float, float]] = []  # (perf_counter, RssAnon in MB)
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        offset, partial = 0, b""
        while not self._stop.is_set():
            now = time.perf_counter()
            anon = rss_anon_mb(self.pid)
            if anon == anon:
                self.memory.append((now, anon))
            try:
                with open(self.log_path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except OSError:
                chunk = b""
            offset += len(chunk)
            *complete, partial = (partial + chunk).split(b"\n")
            self.lines += [(now, line.decode(errors="replace")) for line in complete]
            self._stop.wait(SAMPLE_EVERY)

    def anon_between(self, start: float, end: float) -> list[float]:
        return [mb for t, mb in self.memory if start <= t <= end]

    def seen(self, pattern: re.Pattern, since: float = 0.0) -> list[tuple[float, re.Match]]:
        return [(t, m) for t, line in self.lines if t >= since and (m := pattern.search(line))]


def rss_anon_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def steady(sampler: Sampler, seconds: float = STEADY_SECONDS) -> float:
    start = time.perf_counter()
    time.sleep(seconds)
    return statistics.median(sampler.anon_between(start, time.perf_counter()))


@dataclass
class Answer:
    client: int
    endpoint: str
    query: str
    sent: float
    done: float
    listing: list[dict] | None = None
    error: str | None = None

    @property
    def revisions(self) -> set[str]:
        return {row.get("revision") for row in self.listing or []}


class Clients:
    """gradio_client clients querying the app until stopped: even ones /similar of products every revision has,
    odd ones /recommend of generated photos."""

    def __init__(self, url: str, count: int, names: list[str], photos: list[Path]):
        self.url, self.names, self.photos = url, names, photos
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, args=(i,), daemon=True) for i in range(count)]

    def start(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _ask(self, number: int) -> None:
        from gradio_client import handle_file

        own = client(self.url)
        rng = np.random.default_rng(number)
        while not self._stop.is_set():
            if number % 2 == 0 or not self.photos:
                endpoint, query = "/similar", self.names[int(rng.integers(len(self.names)))]
                arguments = (query, K)
            else:
                endpoint, query = "/recommend", str(self.photos[int(rng.integers(len(self.photos)))])
                arguments = (handle_file(query), K)
            sent = time.perf_counter()
            try:
                _, listing = own.predict(*arguments, api_name=endpoint)
                self.answers.append(Answer(number, endpoint, query, sent, time.perf_counter(), listing=listing))
            except Exception as exc:  # every failure is counted, with where it was raised
                where = traceback.extract_tb(exc.__traceback__)[-1]
                error = f"{exc!r}"[:300] + f" raised at {Path(where.filename).name}:{where.lineno} ({where.name})"
                self.answers.append(Answer(number, endpoint, query, sent, time.perf_counter(), error=error))

    def first_from(self, sha: str, since: float) -> Answer | None:
        return next((a for a in list(self.answers) if a.done >= since and sha in a.revisions), None)

    def wait_for(self, sha: str, since: float, timeout: float, more: int = 0) -> Answer | None:
        """The first answer from `sha` after `since` (then `more` answers after it); None after `timeout` seconds."""
        deadline = time.perf_counter() + timeout
        while (first := self.first_from(sha, since)) is None and time.perf_counter() < deadline:
            time.sleep(0.05)
        count = len(self.answers)
        while first is not None and len(self.answers) < count + more and time.perf_counter() < deadline:
            time.sleep(0.05)
        return first


# ---------------------------------------------------------------- one app following the stand-in


class RemoteHub:
    """The Hub stand-in in a process of its own, as the Hub is another machine: its answers do not wait for this
    process' client threads (one interpreter lock), and the app's downloads do not slow the clients."""

    def __init__(self, root: Path):
        self._pipe, theirs = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve_hub, args=(str(root), theirs), name="hub-standin", daemon=True
        )
        self._process.start()
        self.url = self._pipe.recv()

    def _ask(self, *command):
        self._pipe.send(command)
        return self._pipe.recv()

    def commits(self) -> list[str]:
        """The repo's commits, oldest first."""
        return self._ask("commits")

    def traffic(self) -> tuple[int, int]:
        """(bytes of file content the stand-in has received from pushes, bytes of files it has sent) so far."""
        return self._ask("traffic")

    def revision_bytes(self, sha: str) -> int:
        """The revision's bytes on the Hub, what the app downloads (bench_hub.revision_bytes)."""
        return self._ask("revision_bytes", sha)

    def stop(self) -> None:
        if self._process.is_alive():
            self._ask("stop")
        self._process.join(30)


def _serve_hub(root: str, pipe) -> None:
    from hub_standin import HubStandIn  # tests/ is on the path (benchmarks/__init__.py, imported with this module)

    hub = HubStandIn(root, token=TOKEN).start()
    pipe.send(hub.url)
    while True:
        command, *args = pipe.recv()
        if command == "stop":
            hub.stop()
            pipe.send(None)
            return
        if command == "commits":
            pipe.send(list(hub.repo(REPO).commits) if hub.repos else [])
        elif command == "traffic":
            pipe.send((sum(size for _, size in hub.uploads), sum(size for _, size in hub.downloads)))
        elif command == "revision_bytes":
            pipe.send(revision_bytes(hub, args[0]))


class Following:
    """The stand-in with `first` pushed, and `python app.py` following its branch; a context manager."""

    def __init__(self, first: Revision, work: Path, log=print, start_timeout: float = 1800.0):
        self.work, self.log = work, log
        self.contents: dict[str, Revision | None] = {}  # commit -> the local revision it holds
        self.hub = RemoteHub(work / "hub")
        self.app = self.sampler = None
        try:
            self._start(first, start_timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, first: Revision, start_timeout: float) -> None:
        from app_runner import AppProcess, app_env, free_port

        from fashion_search.hub import push_bundle

        work = self.work
        started = time.perf_counter()
        self.first = push_bundle(first.folder, REPO, token=TOKEN, endpoint=self.hub.url).commit_sha
        self.contents[self.first] = first
        self.first_push_s = time.perf_counter() - started
        port = free_port()
        env = app_env(
            work / "app",
            FASHION_CATALOG=REPO,
            FASHION_WEIGHTS="random",
            FASHION_REFRESH=f"{REFRESH:g}",
            HF_ENDPOINT=self.hub.url,
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        (work / "app").mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.app = AppProcess(["--host", "127.0.0.1", "--port", str(port)], env, work / "app.log")
        self.url = f"http://127.0.0.1:{port}/"
        self.sampler = Sampler(self.app.process.pid, work / "app.log").start()
        self._wait_ready(start_timeout)
        self.start_s = time.perf_counter() - started
        self.cache = work / "app" / "hf"

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.app.process.poll() is not None:
                raise RuntimeError(f"app.py exited:\n{self.app.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "config", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"app.py did not answer in {timeout:.0f} s:\n{self.app.log.read_text()[-3000:]}")

    def push(self, revision: Revision) -> tuple[str, float, float, list[str]]:
        """(the pushed commit, when the push started, when it returned, the commits it made before the last one)."""
        from fashion_search.hub import push_bundle

        before = self.hub.commits()
        started = time.perf_counter()
        sha = push_bundle(revision.folder, REPO, token=TOKEN, endpoint=self.hub.url).commit_sha
        returned = time.perf_counter()
        self.contents[sha] = revision
        made = [c for c in self.hub.commits() if c not in before]
        return sha, started, returned, made[:-1]

    def revision_folders(self) -> set[str]:
        """The commits whose revision folder the app's cache holds."""
        folder = self.cache / "fashion-search" / "bundles" / f"datasets--{REPO.replace('/', '--')}"
        return {path.name for path in folder.iterdir()} if folder.is_dir() else set()

    def wait_released(self, sha: str, since: float) -> float | None:
        """Seconds from `since` until the app's cache holds the revision folder of `sha` alone (the replaced revisions'
        removed); None if it did not in time."""
        deadline = since + RELEASE_TIMEOUT
        while time.perf_counter() < deadline:
            if self.revision_folders() == {sha}:
                return time.perf_counter() - since
            time.sleep(0.2)
        return None

    def content_of(self, sha: str, local: list[Revision]) -> Revision | None:
        """The local revision commit `sha` holds: the one pushed, for a push's last commit; for another (a commit a
        push made on the way), fetched and loaded here as the app would (hub.fetch_commit, load_catalogue), whatever
        the layout on the Hub, and known by its product names."""
        if sha not in self.contents:
            from fashion_search import hub
            from fashion_search.images import load_catalogue

            cache = self.work / "judge"
            folder = hub.fetch_commit(REPO, sha, cache_dir=cache, endpoint=self.hub.url)
            names = load_catalogue(folder)[0].filenames
            self.contents[sha] = next((revision for revision in local if revision.names == names), None)
            hub.release_commit(REPO, sha, cache_dir=cache)
        return self.contents[sha]

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.app is not None:
            self.app.stop()
        self.hub.stop()

    def __enter__(self) -> Following:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Swap:
    """One change pushed and taken live."""

    sha: str
    push_s: float
    live_s: float | None  # push returned -> first answer from `sha`
    fetched_s: float | None  # push returned -> the app's log says the revision is fetched and checked
    swapped_s: float | None  # push returned -> the app's log says it serves the revision
    loaded_s: float | None  # what the app's log says loading it took (fetch, check, load, warm)
    intermediate: list[str]  # the push's earlier commits, which the branch passed through
    taken: list[tuple[str, float]]  # (revision, seconds after the push returned) swapped in since the push began
    steady_mb: float
    peak_mb: float
    after_mb: float | None
    released_s: float | None  # first answer from `sha` -> the replaced revision's folder gone
    checks: dict
    revision_bytes: int  # the pushed revision's bytes on the Hub (the card left out)
    sent_bytes: int  # file content the push sent
    downloaded_bytes: int  # what the following app downloaded from the push's start until the replaced one's release


def take_change(
    app: Following, revision: Revision, local: list[Revision], timeout: float, more: int, asking: Clients, log
) -> Swap:
    """Push `revision`; wait for the first answer from it, the replaced revision's release, then check the answers."""
    steady_mb = steady(app.sampler)
    sent_before, served_before = app.hub.traffic()
    sha, started, returned, intermediate = app.push(revision)
    sent_after, served_before = app.hub.traffic()  # from here: the app's downloads (the push reads the Hub too)
    log(f"  pushed {sha[:12]} in {returned - started:.1f} s ({len(intermediate)} earlier commits); waiting ...")
    first = asking.wait_for(sha, started, timeout, more)
    live_s = None if first is None else first.done - returned
    released_s = after_mb = None
    if first is not None:
        released_s = app.wait_released(sha, first.done)
        after_mb = steady(app.sampler)
    end = time.perf_counter()
    _, served_after = app.hub.traffic()
    fetched = [t for t, m in app.sampler.seen(FETCHED, started) if m.group(1) == sha]
    serving = [(t, m) for t, m in app.sampler.seen(SERVING, started) if first is None or t <= first.done + 1]
    mine = [(t, m) for t, m in serving if sha.startswith(m.group(1))]
    checks = check_after_swap(app, sha, local) if first is not None else {}
    swap = Swap(
        sha=sha,
        push_s=returned - started,
        live_s=live_s,
        fetched_s=fetched[0] - returned if fetched else None,
        swapped_s=mine[0][0] - returned if mine else None,
        loaded_s=float(mine[0][1].group(2)) if mine else None,
        intermediate=intermediate,
        taken=[(m.group(1), t - returned) for t, m in serving],
        steady_mb=steady_mb,
        peak_mb=max(app.sampler.anon_between(started, end)),
        after_mb=after_mb,
        released_s=released_s,
        checks=checks,
        revision_bytes=app.hub.revision_bytes(sha),
        sent_bytes=sent_after - sent_before,
        downloaded_bytes=served_after - served_before,
    )
    log(
        f"  live after {_s(swap.live_s)} (fetched and checked {_s(swap.fetched_s)}, swapped {_s(swap.swapped_s)}, "
        f"loading took {_s(swap.loaded_s)}); revisions taken {swap.taken}; RssAnon steady {steady_mb:.0f} MB, peak "
        f"{swap.peak_mb:.0f} MB, after {after_mb or float('nan'):.0f} MB; replaced revisions released "
        f"{_s(released_s)} after; checks {checks}; {_traffic(swap)}"
    )
    return swap


def check_after_swap(app: Following, sha: str, local: list[Revision]) -> dict:
    """/similar of kept and new products against the brute force over the revision; sold-out products refused."""
    from gradio_client.exceptions import AppError

    now = app.content_of(sha, local)
    previous = local[next(i for i, revision in enumerate(local) if revision is now) - 1]
    rng = np.random.default_rng(int(sha[:8], 16))
    kept = [n for n in now.names if n in previous.rows]
    new = [n for n in now.names if n not in previous.rows]
    gone = [n for n in previous.names if n not in now.rows]
    own = client(app.url)
    outcome = {"equal": 0, "tie": 0, "differs": 0, "other revision": 0, "refused": 0, "sold out answered": 0}
    for name in [*rng.choice(kept, CHECK_KEPT, replace=False), *rng.choice(new, CHECK_NEW, replace=False)]:
        _, listing = own.predict(str(name), K, api_name="/similar")
        if {row["revision"] for row in listing} != {sha}:
            outcome["other revision"] += 1
        else:
            outcome[agreement(listing, now.nearest_others(str(name)))] += 1
    for name in rng.choice(gone, CHECK_GONE, replace=False):
        try:
            own.predict(str(name), K, api_name="/similar")
            outcome["sold out answered"] += 1
        except AppError as exc:
            outcome["refused"] += f"No product '{name}' in this catalogue (revision {sha[:12]}" in str(exc)
    return outcome


def judge_answers(app: Following, answers: list[Answer], local: list[Revision]) -> dict:
    """Failed requests, answers mixing revisions or naming a product outside theirs, /similar against brute force;
    each failure with where it was raised and the seconds from its request to the nearest swap (the app's log)."""
    content: dict[str, Revision | None] = {}
    counts = {"answers": len(answers), "failed": 0, "stream closed": 0, "mixed": 0, "foreign": 0}
    counts.update(equal=0, tie=0, differs=0)
    swapped = [t for t, _ in app.sampler.seen(SERVING)]
    errors = []
    for answer in answers:
        if answer.error is not None:
            counts["failed"] += 1
            nearest = min(swapped, key=lambda t: abs(t - answer.sent), default=None)
            counts["stream closed"] += _stream_closed(answer.error)
            errors.append(
                f"{answer.endpoint} {answer.error} after {answer.done - answer.sent:.1f} s, sent "
                + ("with no swap" if nearest is None else f"{answer.sent - nearest:+.1f} s from a swap")
            )
            continue
        if len(answer.revisions) != 1:
            counts["mixed"] += 1
            continue
        (sha,) = answer.revisions
        if sha not in content:
            content[sha] = app.content_of(sha, local)
        revision = content[sha]
        if revision is None or any(row["filename"] not in revision.rows for row in answer.listing):
            counts["foreign"] += 1
        elif answer.endpoint == "/similar":
            counts[agreement(answer.listing, revision.nearest_others(answer.query))] += 1
    counts["revisions answered from"] = len(content)
    counts["errors"] = errors[:10]
    return counts


def _stream_closed(error: str) -> bool:
    """A CancelledError gradio_client raised itself: its reader of the session's event stream ended (the server
    closes the stream when the session has nothing pending, and a request sent just then is left waiting on the closed
    one). The request may have been answered; the client never reads it (RESULTS.md, figure 9)."""
    return error.startswith("CancelledError") and "(stream_sse_v1plus)" in error


def _taken_before(swap: Swap) -> list[tuple[str, float]]:
    """The revisions the app swapped in before the pushed one, since the push began (the push's earlier commits)."""
    return [(sha, seconds) for sha, seconds in swap.taken if not swap.sha.startswith(sha)]


def _traffic(swap: Swap) -> str:
    """The bytes a push sent and the app downloaded for one change, each as a share of the revision's bytes."""
    revision = swap.revision_bytes
    return (
        f"the push sent {swap.sent_bytes / 1e6:,.0f} MB ({_share(swap.sent_bytes / revision)}), the app downloaded "
        f"{swap.downloaded_bytes / 1e6:,.0f} MB ({_share(swap.downloaded_bytes / revision)}) of the revision's "
        f"{revision / 1e6:,.0f} MB"
    )


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def _photos(folder: Path) -> list[Path]:
    rng = np.random.default_rng(9)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(4):
        paths.append(folder / f"query-{i}.jpg")
        paths[-1].write_bytes(data.jpeg_bytes(data.draw_product(rng, (300, 400))))
    return paths


def _keep_log(work: Path, rows: int, log) -> None:
    """The app's log kept beside the cached bundles (the last run's at each size); the rest of the run removed."""
    kept = data.CACHE / f"live-{rows}-app.log"
    if (work / "app.log").is_file():
        shutil.copyfile(work / "app.log", kept)
        log(f"  app.py's log: {kept}")
    shutil.rmtree(work, ignore_errors=True)


def _stable_names(local: list[Revision], count: int = 200) -> list[str]:
    """Products every revision has, so that a client's /similar is never refused for a sold-out product."""
    common = set(local[0].names).intersection(*(r.names for r in local[1:]))
    return sorted(common)[:: max(1, len(common) // count)][:count]


# ---------------------------------------------------------------- the two runs


def run_small(rows: int = SMALL, swaps: int = SWAPS_UNDER_LOAD, log=print) -> dict:
    """One change with one client asking, then `swaps` changes under CLIENTS clients, at `rows` products."""
    folders = revisions(rows, 1 + swaps, log)
    local = [Revision.read(folder) for folder in folders]
    work = Path(tempfile.mkdtemp(prefix="bench-live-"))
    log(f"figure 9: {rows:,} products: push, start app.py following the branch (FASHION_REFRESH={REFRESH:g}) ...")
    try:
        with Following(local[0], work, log) as app:
            names = _stable_names(local)
            photos = _photos(work / "photos")
            alone = Clients(app.url, 1, names, []).start()
            first = alone.wait_for(app.first, 0.0, 120)
            assert first is not None, "no answer from the first revision"
            log(f"  pushed in {app.first_push_s:.1f} s, app answering {app.start_s:.1f} s after its start")
            log("figure 9: one change, one client asking ...")
            single = take_change(app, local[1], local, 600, 0, alone, log)
            alone.stop()
            crowd = Clients(app.url, CLIENTS, names, photos).start()
            crowd.wait_for(single.sha, 0.0, 120, more=8)
            log(f"figure 9: {CLIENTS} clients querying for {CONTROL_SECONDS:.0f} s with no change pushed ...")
            mark = len(crowd.answers)
            control_mb = [steady(app.sampler)]
            time.sleep(CONTROL_SECONDS - 2 * STEADY_SECONDS)
            control_mb.append(steady(app.sampler))
            control = judge_answers(app, crowd.answers[mark:], local)
            control["RssAnon MB"] = control_mb
            log(f"  their answers: {control}")
            mark = len(crowd.answers)
            loaded: list[Swap] = []
            swaps_began = time.perf_counter()
            for number in range(2, 2 + swaps):
                log(f"figure 9: change {number}, {CLIENTS} clients querying ...")
                loaded.append(take_change(app, local[number], local, 600, 8, crowd, log))
            swaps_s = time.perf_counter() - swaps_began
            crowd.stop()
            judged = judge_answers(app, crowd.answers[mark:], local)
            judged_alone = judge_answers(app, alone.answers, local)
            log(f"  the clients' answers: {judged}; the one client's: {judged_alone}")
            return {
                "rows": rows,
                "single": single,
                "loaded": loaded,
                "judged": judged,
                "judged_alone": judged_alone,
                "control": control,
                "swaps_s": swaps_s,
            }
    finally:
        _keep_log(work, rows, log)


def run_large(rows: int = LARGE, swaps: int = LARGE_SWAPS, log=print) -> dict:
    """`swaps` changes at `rows` products (the approximate index carried over), one client asking throughout: the
    first is the figure; the others say whether the memory left after a swap is reused by the next or grows."""
    folders = revisions(rows, swaps, log)
    local = [Revision.read(folder) for folder in folders]
    work = Path(tempfile.mkdtemp(prefix="bench-live-", dir=data.CACHE))  # beside the bundles: several GB
    log(f"figure 9: {rows:,} products: push, start app.py following the branch (FASHION_REFRESH={REFRESH:g}) ...")
    try:
        with Following(local[0], work, log) as app:
            asking = Clients(app.url, 1, _stable_names(local, 50), []).start()  # 50: fewer brute-force searches
            assert asking.wait_for(app.first, 0.0, 600) is not None, "no answer from the first revision"
            log(f"  pushed in {app.first_push_s:.1f} s, app answering {app.start_s:.1f} s after its start")
            taken = []
            for number in range(1, swaps + 1):
                log(f"figure 9: change {number} of {swaps} at {rows:,} products ...")
                taken.append(take_change(app, local[number], local, 1800, 0, asking, log))
            asking.stop()
            judged = judge_answers(app, asking.answers, local)
            log(f"  the client's answers: {judged}")
            return {"rows": rows, "swap": taken[0], "more": taken[1:], "judged": judged}
    finally:
        _keep_log(work, rows, log)


# ---------------------------------------------------------------- the table


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 and rows % 1_000_000 == 0 else f"{rows // 1000}k"


def _memory_row(label: str, swap: Swap, note: str) -> list[Row]:
    peak = swap.peak_mb / swap.steady_mb
    after = (swap.after_mb or float("nan")) / swap.steady_mb
    return [
        Row(
            f"9: app.py's anonymous memory (RssAnon, every {SAMPLE_EVERY} s) at {label}: peak from the push until "
            f"the replaced revision is released{note}",
            f"steady before {swap.steady_mb:,.0f} MB",
            f"{swap.peak_mb:,.0f} MB",
            ratio(peak),
            f"≤ {PEAK_TARGET} ×",
            verdict(peak <= PEAK_TARGET),
        ),
        Row(
            f"9: … steady after (the replaced revision's files removed {_s(swap.released_s)} after the first answer "
            "from the new one)",
            f"steady before {swap.steady_mb:,.0f} MB",
            "n/a" if swap.after_mb is None else f"{swap.after_mb:,.0f} MB",
            ratio(after),
            f"back to steady (≤ {AFTER_TARGET} ×)",
            verdict(after <= AFTER_TARGET),
        ),
    ]


def _phases(swap: Swap) -> str:
    return (
        f"fetched and checked at {_s(swap.fetched_s)}, swapped at {_s(swap.swapped_s)} (the app's log: loading took "
        f"{_s(swap.loaded_s)})"
    )


def small_rows(result: dict) -> list[Row]:
    label, single, loaded = _label(result["rows"]), result["single"], result["loaded"]
    control = result["control"]
    target = SMALL_TARGET + REFRESH
    gone, new = change_size(result["rows"])
    lives = [s.live_s for s in loaded if s.live_s is not None]
    judged, alone = result["judged"], result["judged_alone"]
    checks = [single.checks, *(s.checks for s in loaded)]
    total = {key: sum(c.get(key, 0) for c in checks) for key in checks[0]}
    asked = CHECK_KEPT + CHECK_NEW
    all_equal = total["equal"] + total["tie"] == asked * len(checks)
    similar = judged["equal"] + judged["tie"] + judged["differs"]
    passed = [s.intermediate for s in [single, *loaded]]
    taken_between = sum(len(_taken_before(s)) for s in [single, *loaded])
    return [
        Row(
            f"9: {label} products, a 1 % change ({gone} sold out, {new} new) pushed: from the push's return to the "
            "first gradio_client answer from the new commit (one client asking)",
            f"the refresh interval {REFRESH:g} s; target {target:g} s",
            f"{_s(single.live_s)}: {_phases(single)}",
            ratio((single.live_s or float("inf")) / target),
            f"≤ 30 s + the refresh interval ({target:g} s)",
            verdict(single.live_s is not None and single.live_s <= target),
        ),
        Row(
            f"9: … the same for {len(loaded)} more changes with {CLIENTS} clients querying throughout",
            f"the refresh interval {REFRESH:g} s; target {target:g} s",
            f"{statistics.median(lives):.1f} s (n={len(lives)}, {min(lives):.1f}–{max(lives):.1f})"
            if lives
            else "never",
            ratio(max(lives) / target) if lives else "",
            f"≤ {target:g} s",
            verdict(len(lives) == len(loaded) and max(lives) <= target),
        ),
        Row(
            "9: … the push: seconds; commits the branch passed through before the pushed one; revisions the app "
            "took on the way",
            "—",
            f"{statistics.median([s.push_s for s in [single, *loaded]]):.1f} s (median); "
            f"{sum(map(len, passed))} in {len(passed)} pushes; {taken_between}",
            "",
            "(information)",
        ),
        Row(
            f"9: {CLIENTS} gradio_client clients across {len(loaded)} swaps (2 /similar, 2 /recommend): failed "
            "requests (of which gradio_client's own CancelledError, its event stream closed under the request); "
            "answers mixing revisions; answers naming a product not in their revision. Reference: the same "
            f"clients for {CONTROL_SECONDS:.0f} s with no change pushed",
            f"{control['failed']} failed ({control['stream closed']}) of {control['answers']:,}",
            f"{judged['failed']} ({judged['stream closed']}) of {judged['answers']:,} (answers from "
            f"{judged['revisions answered from']} revisions); {judged['mixed']}; {judged['foreign']}. The one client "
            f"across the first swap: {alone['failed']} ({alone['stream closed']}) of {alone['answers']:,}; "
            f"{alone['mixed']}; {alone['foreign']}",
            "",
            "0; 0; 0",
            verdict(all(j["failed"] == j["mixed"] == j["foreign"] == 0 for j in (judged, alone))),
        ),
        Row(
            "9: … every /similar answer of the clients against the brute-force search (numpy, float64) over the "
            "vectors of the revision it names: equal (products, order, distances to 2e-6); equal but for tied "
            "distances; different",
            f"{similar:,} /similar answers",
            f"{judged['equal']:,}; {judged['tie']}; {judged['differs']}",
            "",
            "all equal",
            verdict(judged["differs"] == 0 and similar > 0),
        ),
        Row(
            f"9: after each of the {len(checks)} swaps, /similar of {CHECK_KEPT} kept and {CHECK_NEW} new products "
            f"against the brute force; /similar of {CHECK_GONE} sold-out products refused",
            f"{asked * len(checks)} asked; {CHECK_GONE * len(checks)} sold out",
            f"{total['equal']} equal, {total['tie']} tied, {total['differs']} different, {total['other revision']} "
            f"from another revision; {total['refused']} refused, {total['sold out answered']} answered",
            "",
            "all equal; all refused",
            verdict(all_equal and total["refused"] == CHECK_GONE * len(checks)),
        ),
        *_memory_row(label, single, " (one client)"),
        Row(
            f"9: … RssAnon under the {CLIENTS} clients, steady (median of {STEADY_SECONDS:.0f} s) at the start and the "
            f"end: {CONTROL_SECONDS:.0f} s with no change pushed; the {len(loaded)} changes "
            f"({result['swaps_s']:.0f} s)",
            f"no change: {control['RssAnon MB'][0]:,.0f} → {control['RssAnon MB'][1]:,.0f} MB",
            f"{loaded[0].steady_mb:,.0f} → {loaded[-1].after_mb or float('nan'):,.0f} MB (after each: "
            + ", ".join(f"{s.after_mb or float('nan'):,.0f}" for s in loaded)
            + ")",
            "",
            "(information: growth from requests vs from swaps)",
        ),
        _traffic_row(label, [single, *loaded]),
    ]


def _traffic_row(label: str, swaps: list[Swap]) -> Row:
    sent = [s.sent_bytes / s.revision_bytes for s in swaps]
    got = [s.downloaded_bytes / s.revision_bytes for s in swaps]
    return Row(
        f"9: {label}: the bytes a push sends and the bytes the following app downloads for one change (the Hub "
        "stand-in's count: file content received; GET /resolve/ answers), as a share of the revision's bytes",
        f"the revision: {statistics.median(s.revision_bytes for s in swaps) / 1e6:,.0f} MB",
        f"sent {_shares(sent)}; downloaded {_shares(got)} (n={len(swaps)})",
        "",
        "(information: in proportion to the change is part 2's)",
    )


def _shares(values: list[float]) -> str:
    low, high = _share(min(values)), _share(max(values))
    return low if low == high else f"{low}–{high}"


def _share(fraction: float) -> str:
    """A share of the revision: to 0.1 % below 10 % (a change's pieces), to 1 % above."""
    return f"{fraction:.1%}" if fraction < 0.1 else f"{fraction:.0%}"


def large_rows(result: dict) -> list[Row]:
    label, swap, judged = _label(result["rows"]), result["swap"], result["judged"]
    gone, new = change_size(result["rows"])
    checks = swap.checks
    out = [
        Row(
            f"9: {label} products (the approximate index carried over), a 1 % change ({gone:,} sold out, {new:,} new) "
            "pushed: from the push's return to the first answer from the new commit",
            f"target {LARGE_TARGET:.0f} s",
            f"{_s(swap.live_s)}: {_phases(swap)}; the push took {swap.push_s:.0f} s, the branch passed through "
            f"{len(swap.intermediate)} earlier commits, the app took {len(_taken_before(swap))} of them",
            ratio((swap.live_s or float("inf")) / LARGE_TARGET),
            "≤ 5 min",
            verdict(swap.live_s is not None and swap.live_s <= LARGE_TARGET),
        ),
        *_memory_row(label, swap, ""),
        _traffic_row(label, [swap, *result["more"]]),
        Row(
            f"9: … one client's requests throughout: failed; mixing revisions; after the swap /similar of {CHECK_KEPT} "
            f"kept and {CHECK_NEW} new products against the brute force (the index: figure 8's recall); "
            f"{CHECK_GONE} sold-out products refused",
            f"{judged['answers']:,} answers",
            f"{judged['failed']} ({judged['stream closed']} gradio_client's own CancelledError); {judged['mixed']}; "
            f"{checks.get('equal', 0)} equal, {checks.get('tie', 0)} tied, "
            f"{checks.get('differs', 0)} different; {checks.get('refused', 0)} refused",
            "",
            "0; 0; (recall ≥ 0.99); all refused",
            verdict(judged["failed"] == judged["mixed"] == 0 and checks.get("refused") == CHECK_GONE),
        ),
    ]
    if result["more"]:
        swaps = [swap, *result["more"]]
        out.append(
            Row(
                f"9: … RssAnon over {len(swaps)} such changes in a row: steady before each / peak / after each (MB); "
                "from the push's return to the first answer from each",
                f"steady before the first {swap.steady_mb:,.0f} MB",
                "; ".join(
                    f"{s.steady_mb:,.0f} / {s.peak_mb:,.0f} / {s.after_mb or float('nan'):,.0f}, {_s(s.live_s)}"
                    for s in swaps
                ),
                ratio((swaps[-1].after_mb or float("nan")) / swap.steady_mb),
                "(information: growth at every swap would be a leak)",
            )
        )
    return out


def run(ctx, large: int | None = LARGE) -> list[Row]:
    """Figure 9 for the suite: 44k, then the large run at `large` rows (None: skipped)."""
    out = small_rows(run_small(log=ctx.log))
    if large:
        out += large_rows(run_large(large, log=ctx.log))
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import markdown

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=("small", "large"), default=["small", "large"])
    parser.add_argument("--small-rows", type=int, default=SMALL)
    parser.add_argument("--rows", type=int, default=LARGE, help="the large run's rows (default 200,000)")
    parser.add_argument("--swaps", type=int, default=SWAPS_UNDER_LOAD, help="44k: changes under the clients")
    parser.add_argument("--large-swaps", type=int, default=LARGE_SWAPS, help="changes at the large size")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log(f"load average before: {machine.load_average()}")
    rows: list[Row] = []
    if "small" in args.parts:
        rows += small_rows(run_small(args.small_rows, args.swaps, log=log))
    if "large" in args.parts:
        rows += large_rows(run_large(args.rows, args.large_swaps, log=log))
    log(f"load average after: {machine.load_average()}")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
