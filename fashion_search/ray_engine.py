"""The Ray engine: precompute's decoding and embedding on a Ray cluster with Ray Data; the bundle as on one machine.

The driver (precompute.py) keeps everything else: listing, hashing, reuse, chunk files, the merge and the manifest
(pipeline.py). Here each image still to embed becomes a row (its index and absolute path), one block per chunk; a
fixed pool of actors, each holding one model loaded once in its constructor, decodes its block with the project's own
loader (pipeline.decode_image) and embeds it in one forward pass; the rows come back in whatever order the cluster
finishes them, and `ChunkAssembler` puts them back into the driver's chunks by row index.

Decoding happens in the actor, not in a separate stage: a decoded input is 600 kB (224x224x3 float32) against the few
kB of the file it comes from, so nothing large crosses the object store or the network, and with rows handed over
from the driver (no read tasks) every CPU of the cluster can hold an actor without starving another stage (the hang
of Ray issue #44687 needs a read stage waiting for a CPU).

Ray is imported only here, and this module only with `--engine ray`.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fashion_search.imaging import ImageError
from fashion_search.pipeline import Chunk, ChunkResult, PrecomputeError, decode_image

log = logging.getLogger(__name__)

INSTALL = "pip install -r requirements-ray.txt"
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # a local Ray's object store: rows carry vectors and gallery copies only
TASK_RETRIES = 3  # a block whose actor dies is run again this many times, then the run stops (a poison image)
ACTOR_START_TIMEOUT_S = 1800  # an actor pool that cannot start in this time is an error, not a hang
_LOOPBACK = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CAUSE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Mismatch|Unavailable): \S")


class ModelMismatch(RuntimeError):
    """An actor's model is not the driver's (other weights on that node)."""


class RayEngine:
    """Runs the model on a Ray cluster: `embed_chunks` yields each chunk's result as the cluster finishes it.

    Args:
        weights, seed, precision: as Embedder.load; a weights path must be readable at the same path on every node.
        address: a running cluster to join (`ray start --head` prints it; RAY_ADDRESS works too). None starts a
            local Ray on this machine, bound to 127.0.0.1 only, for the length of the run.
        actors: the size of the actor pool; None fills the cluster's CPUs.
        actor_cpus: CPUs per actor, and TensorFlow's threads in it.
    """

    def __init__(
        self,
        weights: str | os.PathLike = "imagenet",
        *,
        seed: int = 0,
        precision: str = "float32",
        address: str | None = None,
        actors: int | None = None,
        actor_cpus: int = 1,
        quiet: bool = False,
    ):
        from fashion_search.embedder import describe_model  # no TensorFlow: the driver builds no model

        self.model = describe_model(weights, seed, precision)  # a missing weights file is refused here, not later
        weights = str(weights)
        self.weights = weights if weights in ("imagenet", "random") else str(Path(weights).expanduser().absolute())
        self.seed, self.precision = seed, precision
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address and self.address.startswith("ray://"):
            raise PrecomputeError(
                f"{self.address} is a Ray Client address, which does not carry Ray Data. Run precompute.py on a node "
                "of the cluster with --ray-address auto (or the head's HOST:PORT), or submit it with `ray job submit`."
            )
        if actor_cpus < 1 or (actors is not None and actors < 1):
            raise PrecomputeError("--ray-actors and --ray-actor-cpus must be at least 1.")
        self.actors, self.actor_cpus, self.quiet = actors, actor_cpus, quiet
        self.ray = _import_ray(local=self.address is None)
        self.started_seconds: float | None = None  # how long joining or starting Ray took, once it has

    def describe(self) -> dict:
        return self.model

    def embed_chunks(self, chunks: list[Chunk]) -> Iterator[ChunkResult]:
        ray = self.ray
        started = time.perf_counter()
        self._connect()
        self.started_seconds = time.perf_counter() - started
        try:
            dataset = self._dataset(chunks)
            assembler = ChunkAssembler(chunks)
            try:
                for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    yield from assembler.add(batch["row"], batch["vector"], batch["shown"], batch["error"])
            except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException) as exc:
                raise PrecomputeError(
                    f"The Ray job failed: {_first_line(exc)} The chunks finished so far are kept: run the same "
                    "command again to resume."
                ) from exc
            if assembler.missing:
                raise PrecomputeError(
                    f"Ray returned no result for {assembler.missing} images. The chunks finished so far are kept: "
                    "run the same command again to resume."
                )
        finally:
            ray.shutdown()

    def _connect(self) -> None:
        ray = self.ray
        logging_level = logging.WARNING if self.quiet else logging.INFO
        if self.address is None:
            ray.init(
                address="local",  # a new Ray, even where `ray start` has left its address for ray.init() to join
                _node_ip_address=_LOOPBACK,
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                logging_level=logging_level,
                log_to_driver=not self.quiet,
            )
            return
        try:
            ray.init(address=self.address, logging_level=logging_level, log_to_driver=not self.quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PrecomputeError(
                f"Could not join the Ray cluster at {self.address}: {_first_line(exc)} Is it running "
                "(`ray status --address ...`), and is RAY_AUTH_MODE the cluster's?"
            ) from exc

    def _dataset(self, chunks: list[Chunk]):
        ray = self.ray
        import pyarrow as pa

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the pipeline's own bar counts the images
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        actors = min(self._pool_size(), len(chunks))
        log.info("Ray: %d actors of %d CPU(s) each, %d chunks to embed.", actors, self.actor_cpus, len(chunks))
        tables, row = [], 0
        for chunk in chunks:  # one block per chunk: each actor call embeds exactly the batch the local engine would
            paths = [os.path.abspath(source) for source in chunk.sources]  # workers do not share the driver's cwd
            tables.append(pa.table({"row": np.arange(row, row + len(paths), dtype=np.int64), "path": paths}))
            row += len(paths)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing max_restarts/max_task_retries this way but has no other way to pass them.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*", category=DeprecationWarning)
            return ray.data.from_arrow(tables).map_batches(
                EmbedActor,
                batch_size=None,  # a whole block, i.e. one chunk
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=self.actor_cpus,
                fn_constructor_kwargs={
                    "weights": self.weights,
                    "seed": self.seed,
                    "precision": self.precision,
                    "expected": self.model,
                    "threads": self.actor_cpus,
                },
                max_restarts=-1,  # an actor that dies is replaced, on another node if its node is gone
                max_task_retries=TASK_RETRIES,
            )

    def _pool_size(self) -> int:
        nodes = [node for node in self.ray.nodes() if node.get("Alive")]
        cpus = [int(node.get("Resources", {}).get("CPU", 0)) for node in nodes]
        capacity = sum(count // self.actor_cpus for count in cpus)
        if capacity == 0:
            raise PrecomputeError(
                f"No node of the Ray cluster has {self.actor_cpus} CPU(s) for an actor (CPUs per node: {cpus}). "
                "Lower --ray-actor-cpus, or add nodes."
            )
        if self.actors is not None and self.actors > capacity:
            raise PrecomputeError(
                f"--ray-actors {self.actors} needs {self.actors * self.actor_cpus} CPUs in actor-sized pieces; the "
                f"cluster has room for {capacity} actors of {self.actor_cpus} CPU(s) (CPUs per node: {cpus})."
            )
        return self.actors or capacity


class EmbedActor:
    """One model per actor, loaded once; each call decodes and embeds one block of rows {row, path}."""

    def __init__(self, weights: str, seed: int, precision: str, expected: dict, threads: int):
        from fashion_search.embedder import Embedder  # TensorFlow, in the actor's process

        self.embedder = Embedder.load(weights, seed=seed, precision=precision, threads=threads)
        if self.embedder.describe() != expected:
            raise ModelMismatch(
                f"This node's model is {self.embedder.describe()['weights']}, the driver's "
                f"{expected['weights']}: every node must read the same weights file."
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = [decode_image(Path(path)) for path in batch["path"]]
        good = [i for i, item in enumerate(decoded) if not isinstance(item, ImageError)]
        vectors = np.zeros((len(decoded), self.embedder.describe()["dim"]), np.float32)
        if good:
            vectors[good] = self.embedder.embed(np.stack([decoded[i][0] for i in good]))
        failed = [isinstance(item, ImageError) for item in decoded]
        return {
            "row": np.asarray(batch["row"], dtype=np.int64),
            "vector": vectors,
            "shown": np.array([b"" if bad else item[1] for item, bad in zip(decoded, failed)], dtype=object),
            "error": np.array([str(item) if bad else "" for item, bad in zip(decoded, failed)], dtype=object),
        }


class ChunkAssembler:
    """Puts rows that arrive in any order back into their chunks; a chunk is handed out once all its rows are in.

    Row r is the r-th image of the chunks laid end to end. A row that arrives twice (a retried block) is ignored.
    """

    def __init__(self, chunks: list[Chunk]):
        self.chunks = chunks
        self.starts = np.cumsum([0] + [len(chunk.names) for chunk in chunks])
        self.missing = int(self.starts[-1])
        self._open: dict[int, dict] = {}  # chunk index -> its rows so far
        self._done = np.zeros(len(chunks), dtype=bool)

    def add(self, rows: np.ndarray, vectors: np.ndarray, shown: np.ndarray, errors: np.ndarray) -> list[ChunkResult]:
        """Args: rows (n,) int, vectors (n, dim) float32, shown (n,) bytes, errors (n,) str ("" for an embedded one).

        Returns: the chunks these rows complete, each in its own order.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.starts[-1]):
            raise ValueError(f"row indices outside 0..{self.starts[-1] - 1}")
        owners = np.searchsorted(self.starts, rows, side="right") - 1
        completed = []
        for i, (row, owner) in enumerate(zip(rows.tolist(), owners.tolist())):
            if self._done[owner]:
                continue
            parts = self._open.setdefault(owner, {})
            position = row - int(self.starts[owner])
            if position in parts:
                continue
            parts[position] = (vectors[i], shown[i], errors[i])
            self.missing -= 1
            if len(parts) == len(self.chunks[owner].names):
                completed.append(self._result(owner, self._open.pop(owner)))
                self._done[owner] = True
        return completed

    def _result(self, owner: int, parts: dict) -> ChunkResult:
        chunk = self.chunks[owner]
        names, rows, shown, skipped = [], [], [], []
        for position, name in enumerate(chunk.names):
            vector, copy, error = parts[position]
            if error:
                skipped.append((name, str(error)))
            else:
                names.append(name)
                rows.append(vector)
                shown.append(bytes(copy))
        matrix = np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)
        return ChunkResult(chunk, names, matrix, shown, skipped)


def _import_ray(local: bool):
    if local:
        # Without this, Ray on Linux turns 127.0.0.1 into the machine's interface address and listens there: a Ray
        # started for one run stays on loopback. Read by Ray at import, and by every process it starts.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise PrecomputeError(f"--engine ray needs Ray Data, which is not installed ({exc}). Run: {INSTALL}") from exc
    return ray


def _first_line(exc: BaseException) -> str:
    """What went wrong, in a line: the innermost `SomeError: message` of a Ray traceback, else its first line."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if _CAUSE.match(line)]
    line = causes[-1] if causes else lines[0] if lines else type(exc).__name__
    return line.rstrip(".") + "."
