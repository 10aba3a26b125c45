"""The approximate nearest-neighbour index for large catalogues: an inverted file over PCA-reduced vectors, whose
candidates are ranked by their exact distance over the float32 vectors.

`precompute.py --index approximate` writes it into the bundle as plain arrays (`.npy` without pickle, and JSON), each
listed in the manifest with its sha256 like every other bundle file:

    ivf.json              its parameters: reduced dimensions, lists, rows trained on, rows added since, and how far
                          from its centroid a row trained on lies at most, nine times in ten ("far")
    ivf_mean.npy          (d,) float32: the PCA's centre
    ivf_components.npy    (d', d) float32: the PCA's axes, orthonormal rows
    ivf_centroids.npy     (L, d') float32: the k-means centroids of the reduced vectors, one per list
    ivf_lists.npy         (n,) int32: each row's list (its nearest centroid when it was added)
    ivf_codes.npy         (n, d') float32: the rows' reduced vectors in list order (list 0's rows, then list 1's, ...)

A search ranks the lists by their centroid's distance to the query and scores the reduced vectors of the nearest
lists until it has seen its depth's lists' worth of eligible rows (an exact filter only narrows which rows count,
and no eligible row's vectors are copied but those scored). The depth's candidates, the nearest by reduced distance,
are then scored with their float32 vectors, and the FINAL nearest of those are ranked by their euclidean distance
accumulated in float64, as the reference design's scikit-learn call computes it. The distances returned are exact;
only a product the scan or the cut to candidates lost can be missed.

How deep to search depends on the catalogue: the flatter its neighbourhoods, the more candidates the reduced
distances need to keep its true nearest. So `tune` measures recall@5 and @20 against the exact search on query
vectors like users' photos (precompute: altered copies of the catalogue's own pictures, or the owner's photos) and
sets the depth that scores the fewest rows while meeting RECALL_TARGET on tuning queries, then measures it on other,
held-out queries, unfiltered and with a filter keeping FILTER_SHARE of the rows. Depth and figures go into ivf.json
under "search"; an index made before (none there) searches at PROBE_LISTS and RERANK.

"Meeting the target on the tuning queries" means more than their mean reaching it. The tuning queries are a sample
of the queries the catalogue will get, and the cheapest of dozens of depths whose sample mean just reaches the target
is, more often than not, one whose sample happened to go its way: at 200k rows the depth so chosen gave recall@5
0.988 on held-out queries (benchmarks/RESULTS.md, figure 8). So a depth qualifies when a one-sided lower confidence
bound (CONFIDENCE, 95 %) on its recall over all queries of that kind reaches the target: Wilson's score bound on the
share of true neighbours found (`lower_bound`), counted over the effective number of independent neighbours, the
queries times k divided by the design effect (a query's neighbours tend to be found or lost together, so the
per-query shares vary more than independent neighbours would; their observed variance measures by how much). For
large samples this is the familiar mean - 1.645 standard errors of the per-query shares; unlike that, it stays below
1 when the sample shows no miss, so a small sample cannot claim the target: at full recall, recall@5 >= 0.995 needs
at least 108 tuning queries (MIN_QUERIES_FOR_TARGET). The target's margin above the promise (0.995 over 0.99) then
leaves room for the held-out queries' own sampling: re-sampled from 1,000 real queries at 200k rows (400 tuning, 200
held out), the held-out queries showed the promise in 98.9 % (flatter) and 99.6 % (grown) of draws with this rule,
against 86.1 % and 94.8 % with the sample mean, for about 30 % more rows scored (benchmarks/tuning_rule_study.py). A
depth whose scan reaches every row for every query, with as many candidates, is exact by construction: its bound is
1 however few the queries.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.metrics.pairwise import euclidean_distances

from fashion_search import codes as stored
from fashion_search.bundle import INDEX_FILES, BundleError
from fashion_search.codes import CODES_LIST, ranges
from fashion_search.index import Neighbour, NeighbourIndex, limited_threads
from fashion_search.vectors import StackedVectors

logger = logging.getLogger(__name__)

KIND = "ivf-pca-1"
INFO, MEAN, COMPONENTS, CENTROIDS, LISTS, CODES = INDEX_FILES
# A revision in pieces lists its pieces' codes files (CODES_LIST) instead of CODES: fashion_search.codes.

DIMS = 256  # reduced dimensions: a quarter of the memory and scan of 2048, and the candidates are re-ranked exactly
LISTS_PER_SQRT_ROW = 4  # L = 4 sqrt(n): 4,000 lists at 1M rows (faiss' and autofaiss' guideline: 4-16 sqrt(n))
TRAIN_PER_LIST = 40  # k-means sample: rows per list (faiss warns below 39)
TRAIN_ITERATIONS = 16
FAR_QUANTILE = 0.9  # a new row farther from every centroid than this share of the rows trained on is unlike them
PCA_SAMPLE = 32768  # rows the PCA is fitted on
PROBE_LISTS = 96  # an index without a measured depth (made before tune existed): lists' worth of rows scanned,
RERANK = 1024  # and candidates by reduced distance whose float32 distance is computed (at least 8 k)
FINAL = 64  # of those, the nearest whose distance is computed as the reference design does (at least 4 k)
RERANK_BLOCK = 256  # candidates gathered and scored at a time (2 MB of 2,048-d rows: in the cache for both passes)
RECALL_TARGET = {5: 0.995, 20: 0.985}  # recall@k the depth is tuned to meet on the tuning queries
RECALL_PROMISE = {5: 0.99, 20: 0.98}  # and what held-out queries must show
MAX_CANDIDATES = 16384  # deeper than this, or more than MAX_LIST_SHARE of the lists: the index is not worth it
MAX_LIST_SHARE = 0.25
TUNING_RULE = "wilson-lower-bound-95"  # how tune chooses the depth (recorded in ivf.json; the module's docstring)
CONFIDENCE_Z = 1.6449  # one-sided 95 % (CONFIDENCE): the lower bound on recall a depth must bring to the target
CONFIDENCE = 0.95
FILTER_SHARE = 0.1  # the filter recall is measured with: a seeded random tenth of the rows
CANDIDATE_STEPS = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)
LIST_STEPS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
RETRAIN_GROWTH = 0.5  # re-training is due once rows added since training exceed this share of the rows trained on
CHECK_ROWS = 256  # rows whose reduced vector and list are checked against the embeddings at load
NEAR_LISTS = 16  # a checked row's list must be among its 16 nearest


class IndexFileError(BundleError):
    """An index file that cannot be served; the message names the file and the fix."""


@dataclass(frozen=True)
class Depth:
    """How deep a search goes: rows scanned by their reduced vectors, and of those the candidates re-ranked."""

    lists: int  # lists' worth of eligible rows scanned (whole lists, nearest first)
    candidates: int  # the nearest of them by reduced distance, scored with their float32 vectors


DEFAULT_DEPTH = Depth(PROBE_LISTS, RERANK)


@dataclass(frozen=True)
class Queries:
    """Query vectors for measuring recall: like users' photos, each made from a catalogue product or not."""

    vectors: np.ndarray  # (m, d) float32 unit rows
    sources: np.ndarray  # (m,) int64: the catalogue row each was made from, left out of its neighbours; -1: none
    kind: str = "query vectors"  # what they are, for ivf.json

    def __len__(self) -> int:
        return len(self.vectors)

    def split(self, held_out: int) -> tuple[Queries, Queries]:
        """(the first len - held_out, the last held_out): tuning and held-out queries."""
        cut = len(self) - held_out
        first = Queries(self.vectors[:cut], self.sources[:cut], self.kind)
        return first, Queries(self.vectors[cut:], self.sources[cut:], self.kind)


@dataclass(frozen=True)
class IvfIndexData:
    """The index's arrays, as written into and read from a bundle."""

    info: dict
    mean: np.ndarray  # (d,)
    components: np.ndarray  # (d', d)
    centroids: np.ndarray  # (L, d')
    lists: np.ndarray  # (n,) int32
    codes: np.ndarray | stored.InList | stored.InPieces  # (n, d'), in list order (a revision's: where they lie)

    @property
    def retraining_due(self) -> bool:
        return self.info["added_since_training"] > RETRAIN_GROWTH * self.info["trained_rows"]


def default_lists(rows: int) -> int:
    return max(1, round(LISTS_PER_SQRT_ROW * math.sqrt(rows)))


def train(embeddings: np.ndarray, *, lists: int | None = None, dims: int = DIMS, seed: int = 0) -> IvfIndexData:
    """A new index over `embeddings` (n, d) unit rows: PCA and k-means on a sample, then every row assigned."""
    from sklearn.decomposition import PCA  # precompute's, not the app's: imported here

    n, d = embeddings.shape
    lists = min(lists or default_lists(n), n)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, max(TRAIN_PER_LIST * lists, PCA_SAMPLE)), replace=False))
    vectors = np.asarray(embeddings[sample], dtype=np.float32)
    dims = min(dims, d, len(vectors))
    pca = PCA(n_components=dims).fit(vectors[rng.permutation(len(vectors))[:PCA_SAMPLE]])
    mean, components = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
    reduced = (vectors - mean) @ components.T
    centroids = _kmeans(reduced, lists, seed)
    codes = _project(embeddings, mean, components)
    assigned, distances = _assign(codes, centroids)
    info = {
        "kind": KIND,
        "dims": dims,
        "lists": lists,
        "trained_rows": n,
        "added_since_training": 0,
        "far": float(np.quantile(distances, FAR_QUANTILE)),
    }
    return _finish(info, mean, components, centroids, assigned, codes)


def update(previous: IvfIndexData, embeddings: np.ndarray, old_rows: np.ndarray) -> IvfIndexData:
    """`previous` carried over to a changed catalogue without training it again: kept rows keep their list, new rows
    join the list of their nearest centroid. New rows far from every centroid (farther than nine in ten of the rows
    it was trained on: products unlike any before) get lists of their own, by k-means over those rows alone, so the
    search finds them among the lists nearest a query.

    Args:
        old_rows: for each row of `embeddings`, its row in the catalogue `previous` was built for (the same vector),
            or -1 for a row that is new.
    """
    codes = _project(embeddings, previous.mean, previous.components)
    new = np.flatnonzero(old_rows < 0)
    assigned = np.empty(len(embeddings), dtype=np.int32)
    kept = old_rows >= 0
    assigned[kept] = previous.lists[old_rows[kept]]
    centroids = previous.centroids
    assigned[new], distances = _assign(codes[new], centroids)
    far = codes[new][distances > previous.info["far"]]
    mean_list = previous.info["trained_rows"] / previous.info["lists"]
    if len(far) >= 2 * mean_list:
        centroids = np.concatenate([centroids, _kmeans(far, round(len(far) / mean_list), seed=len(embeddings))])
        assigned[new] = _assign(codes[new], centroids)[0]
    info = {
        **previous.info,
        "lists": len(centroids),
        "added_since_training": previous.info["added_since_training"] + len(new),
    }
    return _finish(info, previous.mean, previous.components, centroids, assigned, codes)


def depth_of(info: dict) -> Depth:
    """The depth ivf.json records (measured at build), or DEFAULT_DEPTH for an index made before it did."""
    search = info.get("search")
    return Depth(search["lists"], search["candidates"]) if search else DEFAULT_DEPTH


def tune(data: IvfIndexData, embeddings: np.ndarray, tuning: Queries, held_out: Queries, seed: int = 0) -> IvfIndexData:
    """`data` with the search depth that scores the fewest rows while meeting RECALL_TARGET on `tuning` (its
    recall's 95 % lower bound from them, `lower_bound`, reaching it: the module's docstring), and the recall measured
    at it on `held_out`, unfiltered and with a filter keeping FILTER_SHARE of the rows (`filter_rows` with `seed`),
    recorded in info["search"]. Depths are tried within MAX_CANDIDATES candidates and MAX_LIST_SHARE of the lists;
    when none meets the target, the one nearest it is recorded with "target_met" false (the caller warns).

    Rows scored: those scanned by their reduced vectors plus the candidates scored by their full vectors
    (`search_counted` counts both), each query's mean. A count, not a time: the depth a build chooses does not
    depend on the machine's speed.
    """
    index = ApproximateIndex(embeddings, data)
    truths = _exact_neighbours(embeddings, tuning)
    options = []  # (cost, shortfall from the target, depth) of each depth tried
    for lists, scanned, ranks, fill in _ranked_scans(index, tuning, truths):
        best = min((cost for cost, shortfall, _ in options if shortfall <= 0), default=math.inf)
        if scanned + CANDIDATE_STEPS[0] > best:
            break  # scanning more lists costs more than a depth that meets the target already
        for candidates in (c for c in CANDIDATE_STEPS if c <= min(fill, MAX_CANDIDATES)):
            whole = scanned >= len(index) and candidates >= len(index)
            bounds = {k: lower_bound(_shares_found(ranks, k, candidates), k, whole) for k in RECALL_TARGET}
            shortfall = max(RECALL_TARGET[k] - bounds[k] for k in RECALL_TARGET)
            options.append((scanned + candidates, shortfall, Depth(lists, candidates)))
    meeting = [depth for cost, shortfall, depth in sorted(options, key=lambda o: o[0]) if shortfall <= 0]
    nearest = min(options, key=lambda o: (o[1], o[0]))[2]
    # The ranks predict each depth's recall; what is recorded is the real search's, at the depth chosen.
    for depth in meeting[:3]:
        tuned = _measure_with_bounds(index, tuning, depth, truths)
        if _meets(tuned, RECALL_TARGET, "lower_bound"):
            break
    else:
        depth = nearest
        tuned = _measure_with_bounds(index, tuning, depth, truths)
    met = _meets(tuned, RECALL_TARGET, "lower_bound")
    rows = filter_rows(len(embeddings), seed)
    held = measure(index, held_out, depth=depth)
    filtered = measure(index, held_out, rows, depth=depth) if len(rows) else None
    kept = _meets(held, RECALL_PROMISE) and _meets(filtered or held, RECALL_PROMISE)
    search = {
        "lists": depth.lists,
        "candidates": depth.candidates,
        "queries": tuning.kind,
        "rule": TUNING_RULE,
        "tuning": {"queries": len(tuning), **tuned},
        "held_out": {"queries": len(held_out), **held},
        "held_out_filtered": {"share": FILTER_SHARE, "seed": seed, **filtered} if filtered else None,
        "target": {f"recall@{k}": value for k, value in RECALL_TARGET.items()},
        "target_met": met,
        "promise": {f"recall@{k}": value for k, value in RECALL_PROMISE.items()},
        "promise_kept": kept,
    }
    info = {**data.info, "search": search}
    return IvfIndexData(info, data.mean, data.components, data.centroids, data.lists, data.codes)


def measure(
    index: ApproximateIndex,
    queries: Queries,
    rows: np.ndarray | None = None,
    depth: Depth | None = None,
    truths: list[np.ndarray] | None = None,
) -> dict:
    """{"recall@5", "recall@20": the share of the exact search's 5 and 20 nearest rows (each query's source left
    out) that `index` finds at `depth` among `rows` (None: all), "rows_scored": the mean rows it scored per query
    by their reduced and by their full vectors}; `truths`: the exact neighbours, when already known."""
    return _measured(index, queries, rows, depth, truths)[0]


def _measured(
    index: ApproximateIndex, queries: Queries, rows=None, depth: Depth | None = None, truths=None
) -> tuple[dict, dict, np.ndarray]:
    """(`measure`'s figures, {k: each query's share of its k true neighbours found}, (m, 2) the rows each scored)."""
    truths = _exact_neighbours(index.embeddings, queries, rows) if truths is None else truths
    found, scored = index.search_counted(queries.vectors, max(RECALL_TARGET) + 1, rows, depth)
    figures, per_query = {}, {}
    for k in RECALL_TARGET:
        shares = []
        for result, truth, source in zip(found, truths, queries.sources):
            expected = truth[:k]
            if len(expected):
                got = [n.row for n in result if n.row != source][:k]
                shares.append(len(set(got) & set(expected.tolist())) / len(expected))
        per_query[k] = np.array(shares)
        figures[f"recall@{k}"] = round(float(np.mean(shares)), 4) if shares else 1.0
    figures["rows_scored"] = [round(float(value), 1) for value in scored.mean(axis=0)] if len(scored) else [0, 0]
    return figures, per_query, scored


def _measure_with_bounds(index: ApproximateIndex, queries: Queries, depth: Depth, truths: list[np.ndarray]) -> dict:
    """`measure`'s figures at `depth`, and each recall's lower bound ("lower_bound@k")."""
    figures, per_query, scored = _measured(index, queries, None, depth, truths)
    whole = len(scored) > 0 and scored[:, 0].min() >= len(index) and depth.candidates >= len(index)
    return figures | {f"lower_bound@{k}": round(lower_bound(per_query[k], k, whole), 4) for k in RECALL_TARGET}


def lower_bound(shares: np.ndarray, k: int, whole: bool = False, z: float = CONFIDENCE_Z) -> float:
    """A one-sided lower confidence bound (CONFIDENCE) on recall@k over all queries of the kind `shares` were
    measured on (each query's share of its k true neighbours found): Wilson's score bound on the share of neighbours
    found, over len(shares) * k neighbours divided by the design effect (the per-query shares' variance over what
    independent neighbours would give, at least 1). `whole`: every query's search scanned and re-ranked every row,
    so it was exact by construction: 1. No queries: 0, nothing shown."""
    if whole:
        return 1.0
    m = len(shares)
    if m == 0:
        return 0.0
    p = float(np.mean(shares))
    independent = p * (1 - p) / k  # a query's share's variance if each neighbour were found independently
    observed = float(np.var(shares, ddof=1)) if m > 1 else independent
    effect = max(1.0, observed / independent) if independent > 0 else 1.0
    n = m * k / effect
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def min_queries_for_target(k: int, target: float, z: float = CONFIDENCE_Z) -> int:
    """The fewest queries whose lower bound can reach `target` at all (every neighbour found): Wilson's bound at
    p = 1 is n / (n + z^2) over n = queries * k neighbours."""
    return math.ceil(z * z * target / (1 - target) / k)


MIN_QUERIES_FOR_TARGET = max(min_queries_for_target(k, target) for k, target in RECALL_TARGET.items())


def filter_rows(n: int, seed: int = 0) -> np.ndarray:
    """The rows of the filter recall is measured with: each row kept with probability FILTER_SHARE (seeded)."""
    return np.flatnonzero(np.random.default_rng(seed).random(n) < FILTER_SHARE)


def describe(index: ApproximateIndex) -> str:
    """One phrase for the app's log and the page: the index's depth and the recall measured at build."""
    depth = f"{index.depth.candidates:,} candidates from {index.depth.lists:,} lists' worth of rows"
    search = index.data.info.get("search")
    if not search:
        return f"approximate index, recall not measured (made before precompute measured it), {depth}"
    held = search["held_out"]
    text = (
        f"approximate index, recall@5 {held['recall@5']:.3f} / @20 {held['recall@20']:.3f} measured at build on "
        f"{held['queries']:,} held-out queries, {depth}"
    )
    if not (search["target_met"] and search["promise_kept"]):
        text += "; below its recall target: consider --search exact"
    return text


def _ranked_scans(index: ApproximateIndex, queries: Queries, truths: list[np.ndarray]):
    """For each list depth in LIST_STEPS within MAX_LIST_SHARE of the lists, shallowest first: (lists, mean rows
    scanned, each query's true neighbours' ranks by reduced distance in its scan (a huge number where not scanned),
    the most candidates the scan can fill)."""
    cap = max(1, int(MAX_LIST_SHARE * len(index.data.centroids)))
    reduced = (queries.vectors - index.data.mean) @ index.data.components.T
    wanted = max(CANDIDATE_STEPS[0], 8 * (max(RECALL_TARGET) + 1))  # what a search for the 20 (and a source) scans
    for lists in sorted({step for step in LIST_STEPS if step < cap} | {cap}):
        depth = Depth(lists, wanted)
        ranks, scanned = [], []
        for vector, truth in zip(reduced, truths):
            positions, scores, probed = index._scan(vector, None, depth, wanted)
            scanned.append(len(positions))
            mine = index.position[truth]
            truth_scores = index.codes.score(mine, vector)
            rank = np.searchsorted(np.sort(scores), truth_scores).astype(np.int64)
            rank[~np.isin(index.data.lists[truth], probed)] = np.iinfo(np.int64).max
            ranks.append(rank)
        yield lists, float(np.mean(scanned)), ranks, max(index.probe_rows(depth), wanted)


def _meets(figures: dict, bounds: dict, figure: str = "recall") -> bool:
    return all(figures[f"{figure}@{k}"] >= bound for k, bound in bounds.items())


def _shares_found(ranks: list[np.ndarray], k: int, candidates: int) -> np.ndarray:
    """Each query's share of its k true neighbours ranked within `candidates` in its scan (queries without any
    left out)."""
    return np.array([np.mean(rank[:k] < candidates) for rank in ranks if len(rank)])


def _exact_neighbours(embeddings: np.ndarray, queries: Queries, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """For each query, the rows of its max(RECALL_TARGET) nearest among `rows` by the exact search, its source left
    out; searched in blocks (the exact search scores every row for every query of a block)."""
    k = max(RECALL_TARGET)
    exact = NeighbourIndex(embeddings)
    truths = []
    for start in range(0, len(queries), 32):
        block = slice(start, start + 32)
        for found, source in zip(exact.search(queries.vectors[block], k + 1, rows), queries.sources[block]):
            truths.append(np.array([n.row for n in found if n.row != source][:k], dtype=np.int64))
    return truths


def write(root: Path, data: IvfIndexData) -> list[str]:
    """Write the index files into the bundle folder `root`; returns their names (for the manifest)."""
    arrays = {
        MEAN: data.mean,
        COMPONENTS: data.components,
        CENTROIDS: data.centroids,
        LISTS: data.lists,
        CODES: data.codes,
    }
    for name, array in arrays.items():
        np.save(root / name, array, allow_pickle=False)
    (root / INFO).write_text(json.dumps(data.info, sort_keys=True), encoding="utf-8")
    return list(INDEX_FILES)


def load(root: Path, embeddings: np.ndarray) -> ApproximateIndex:
    """The index of the bundle at `root` (its files already hash-checked against the manifest), the codes
    memory-mapped, checked for shape, range and agreement with `embeddings`; raise `IndexFileError` naming what is
    wrong."""
    n, d = embeddings.shape
    info = _read_info(root / INFO)
    dims, lists = info["dims"], info["lists"]
    mean = _read_array(root, MEAN, np.float32, (d,))
    components = _read_array(root, COMPONENTS, np.float32, (dims, d))
    centroids = _read_array(root, CENTROIDS, np.float32, (lists, dims))
    assigned = _read_array(root, LISTS, np.int32, (n,))
    if assigned.size and not 0 <= int(assigned.min()) <= int(assigned.max()) < lists:
        raise IndexFileError(f"{root / LISTS} names lists outside 0..{lists - 1}. {_REBUILD}")
    layout = _layout(assigned, lists)
    if (root / CODES_LIST).is_file() and isinstance(embeddings, StackedVectors):  # a revision in pieces
        try:
            codes = stored.open_codes(root, embeddings, layout, assigned, dims)
        except BundleError as err:
            raise IndexFileError(str(err)) from err
    else:
        codes = _read_array(root, CODES, np.float32, (n, dims), mmap=True)
    for name, array in ((MEAN, mean), (COMPONENTS, components), (CENTROIDS, centroids)):
        if not np.isfinite(array).all():
            raise IndexFileError(f"{root / name} has non-finite values. {_REBUILD}")
    data = IvfIndexData(info, mean, components, centroids, assigned, codes)
    index = ApproximateIndex(embeddings, data, root, layout)
    index.check_agreement(root)
    return index


def _layout(lists: np.ndarray, count: int) -> stored.Layout:
    order = np.argsort(lists, kind="stable")  # list order -> row
    position = np.empty_like(order)
    position[order] = np.arange(len(order))  # row -> list order
    offsets = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=count))])
    return stored.Layout(order, position, offsets)


class ApproximateIndex:
    """The k nearest catalogue rows to a query, found through the inverted file; `NeighbourIndex`'s interface."""

    def __init__(
        self, embeddings: np.ndarray, data: IvfIndexData, root: Path | None = None, layout: stored.Layout | None = None
    ):
        self.embeddings = embeddings  # (n, d) float32 unit rows, may be memory-mapped
        # What a search gathers rows from: a memory-mapped file as a plain array (the same pages; no numpy.memmap
        # object made for each gather).
        self._rows = np.asarray(embeddings) if isinstance(embeddings, np.memmap) else embeddings
        self.data = data
        self.root = root  # where its files are: codes read in pieces are put together there (settle)
        layout = layout or _layout(data.lists, len(data.centroids))
        self.order, self.position, self.offsets = layout.order, layout.position, layout.offsets
        self.sizes = np.diff(self.offsets)  # list i's rows: order[offsets[i]:offsets[i + 1]]
        codes = data.codes
        if not isinstance(codes, (stored.InList, stored.InPieces)):  # an array in list order (a bundle's)
            codes = stored.InList(codes, stored.squared_norms(codes), layout)
        self.codes = codes  # what a search reads, once: settle replaces it
        self.centroid_norms = np.einsum("ij,ij->i", data.centroids, data.centroids)
        self.depth = depth_of(data.info)
        self.damaged: BundleError | None = None  # found by settle: every search then fails with it
        self._settling: threading.Thread | None = None
        self._settle_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.embeddings)

    def probe_rows(self, depth: Depth) -> float:
        """The eligible rows a search at `depth` scans: its lists' worth, at the mean list's size."""
        return depth.lists * len(self) / max(1, len(self.data.centroids))

    @property
    def in_place(self) -> bool:
        """Whether any of its codes are read from the pieces' files (not yet put together: settle)."""
        return isinstance(self.codes, stored.InPieces)

    def settle(self) -> threading.Thread | None:
        """For a revision in pieces, once: in a background thread, check the codes files it reads from its pieces
        (a mounted catalogue's, not checked at start) against the head, and put its codes together in list order
        into its folder if they are read in pieces, or on a base lacking more than codes.REASSEMBLE_SHARE of them;
        searches then scan that file. The app starts it after its first answer, so a start on a mounted catalogue
        reads only what that answer needs first. A file found damaged is logged, and every later search raises its
        BundleHashMismatch: until then a damaged file could only cost recall (the distances are computed on vectors
        checked as they are read). Returns the thread, started now or before (None: nothing to do)."""
        with self._settle_lock:
            if self._settling is None and self.in_place and self.root is not None:
                self._settling = threading.Thread(target=self._settle, name="index-settle", daemon=True)
                self._settling.start()
        return self._settling

    def _settle(self) -> None:
        try:
            if not stored.due(self.codes):
                stored.check_new(self.root, self.codes)
                return
            codes = stored.assemble(self.root, self.codes, self.embeddings)
        except BundleError as err:
            logger.error("The approximate index of %s: %s", self.root, err)
            self.damaged = err
            return
        except OSError as exc:  # (no room on the disk: the codes stay where they are, and are read there)
            logger.warning("The approximate index of %s stays in its pieces' files: %s", self.root, exc)
            return
        self.data = replace(self.data, codes=codes)
        self.codes = codes
        logger.info("The approximate index of %s is put together in list order (%d rows).", self.root, len(self))

    def check_agreement(self, root: Path) -> None:
        """A sample of rows: each reduced vector is its embedding's, and each row's list is among its NEAR_LISTS
        nearest. (A disagreeing index could only cost recall, never a wrong distance: results are ranked on the
        embeddings.)"""
        n = len(self.embeddings)
        rows = np.unique(np.random.default_rng(0).integers(0, n, min(n, CHECK_ROWS)))
        expected = (np.asarray(self.embeddings[rows]) - self.data.mean) @ self.data.components.T
        held = self.codes.take(self.position[rows])
        if not np.allclose(held, expected, atol=1e-4):
            raise IndexFileError(f"{root / CODES} does not match the catalogue's embeddings. {_REBUILD}")
        # A row joined its nearest list when it was added; lists added since for new products may be nearer still.
        distances = euclidean_distances(held, self.data.centroids, squared=True)
        mine = distances[np.arange(len(rows)), self.data.lists[rows]]
        last = min(NEAR_LISTS, distances.shape[1]) - 1
        near = np.partition(distances, last, axis=1)[:, last]
        if np.any(mine > near + 1e-3):
            raise IndexFileError(f"{root / LISTS} puts rows in lists whose centroid is far from them. {_REBUILD}")

    def search(
        self, queries: np.ndarray, k: int, rows: np.ndarray | None = None, depth: Depth | None = None
    ) -> list[list[Neighbour]]:
        """The k nearest catalogue rows for each query, nearest first (as `NeighbourIndex.search`).

        Args:
            queries: (m, d) or (d,) float32 unit vectors.
            k: how many neighbours; fewer come back when fewer rows are eligible.
            rows: if given, only these catalogue rows are eligible (an exact filter: no other row is returned).
            depth: how deep to search; None: the index's own (measured at build, or DEFAULT_DEPTH).
        """
        return self.search_counted(queries, k, rows, depth)[0]

    def search_counted(
        self, queries: np.ndarray, k: int, rows: np.ndarray | None = None, depth: Depth | None = None
    ) -> tuple[list[list[Neighbour]], np.ndarray]:
        """`search`'s results, and (m, 2) int64: for each query the rows it scored by their reduced vectors, and
        those it scored by their full vectors (what a search costs)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        scored = np.zeros((len(queries), 2), dtype=np.int64)
        if rows is not None and len(rows) == 0:
            return [[] for _ in queries], scored
        eligible = None if rows is None else _Eligible(self, np.asarray(rows, dtype=np.int64))
        depth = depth or self.depth
        results = []
        with limited_threads():
            for i, query in enumerate(queries):
                found, scored[i] = self._search_one(query, k, eligible, depth)
                results.append(found)
        return results, scored

    def _scan(
        self, reduced: np.ndarray, eligible: _Eligible | None, depth: Depth, wanted: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions in list order of the eligible rows scanned, their reduced scores (squared distance less the
        query's norm), the lists probed): the nearest lists until they hold depth's lists' worth of eligible rows
        (and at least `wanted`)."""
        if self.damaged is not None:
            raise self.damaged
        codes = self.codes
        nearest_lists = np.argsort(self.centroid_norms - 2 * (self.data.centroids @ reduced))
        counts = self.sizes if eligible is None else eligible.counts
        enough = int(np.searchsorted(np.cumsum(counts[nearest_lists]), max(self.probe_rows(depth), wanted)))
        probed = nearest_lists[: max(enough + 1, depth.lists)]
        if eligible is None:  # whole lists
            positions, scores = codes.score_lists(probed, reduced)
        else:  # only the eligible rows of those lists
            positions = eligible.positions[ranges(eligible.bounds[probed], eligible.bounds[probed + 1])]
            scores = codes.score(positions, reduced)
        return positions, scores, probed

    def _search_one(
        self, query: np.ndarray, k: int, eligible: _Eligible | None, depth: Depth
    ) -> tuple[list[Neighbour], tuple[int, int]]:
        reduced = (query - self.data.mean) @ self.data.components.T
        cut = max(depth.candidates, 8 * k)
        positions, scores, _ = self._scan(reduced, eligible, depth, cut)
        scanned = len(positions)
        if len(positions) > cut:
            positions = positions[np.argpartition(scores, cut - 1)[:cut]]
        candidates = np.sort(self.order[positions])
        reranked = len(candidates)
        final = max(FINAL, 4 * k)
        if len(candidates) > final:  # the float32 vectors' distances, then only the nearest few in float64
            close = np.empty(len(candidates), dtype=np.float32)
            for start in range(0, len(candidates), RERANK_BLOCK):  # each block scored while it is in the CPU's cache
                vectors = self._rows[candidates[start : start + RERANK_BLOCK]]
                close[start : start + RERANK_BLOCK] = np.einsum("ij,ij->i", vectors, vectors) - 2 * (vectors @ query)
            candidates = np.sort(candidates[np.argpartition(close, final - 1)[:final]])
        # Exact: float32 vectors, float64 accumulation (scikit-learn's upcast), ties to the lower row as a stable sort.
        distances = euclidean_distances(self._rows[candidates], query[None, :]).ravel()
        best = np.argsort(distances, kind="stable")[:k]
        found = [Neighbour(rank + 1, int(candidates[i]), float(distances[i])) for rank, i in enumerate(best)]
        return found, (scanned, reranked)


class _Eligible:
    """A filter's rows in the index's terms: their positions in list order, sorted, and where each list's begin."""

    def __init__(self, index: ApproximateIndex, rows: np.ndarray):
        mask = np.zeros(len(index), dtype=bool)
        mask[index.position[rows]] = True
        self.positions = np.flatnonzero(mask)  # sorted, without sorting
        self.bounds = np.searchsorted(self.positions, index.offsets)  # list i's: positions[bounds[i]:bounds[i + 1]]
        self.counts = np.diff(self.bounds)


def _project(embeddings: np.ndarray, mean: np.ndarray, components: np.ndarray, block: int = 65536) -> np.ndarray:
    """(n, d') float32: the rows' reduced vectors, computed in blocks (no float64 or (n, d) temporary)."""
    out = np.empty((len(embeddings), len(components)), dtype=np.float32)
    for start in range(0, len(embeddings), block):
        out[start : start + block] = (np.asarray(embeddings[start : start + block]) - mean) @ components.T
    return out


def _kmeans(vectors: np.ndarray, lists: int, seed: int) -> np.ndarray:
    """(lists, d') float32 centroids of `vectors`: k-means from random centroids (k-means++ costs minutes more at
    4,000 lists and gained no recall here)."""
    from sklearn.cluster import KMeans  # precompute's, not the app's: imported here

    kmeans = KMeans(min(lists, len(vectors)), init="random", n_init=1, max_iter=TRAIN_ITERATIONS, random_state=seed)
    return kmeans.fit(vectors).cluster_centers_.astype(np.float32)


def _assign(codes: np.ndarray, centroids: np.ndarray, block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """((n,) int32 each reduced vector's nearest centroid, (n,) float32 its squared distance to it)."""
    nearest, distances = np.empty(len(codes), dtype=np.int32), np.empty(len(codes), dtype=np.float32)
    norms = np.einsum("ij,ij->i", centroids, centroids)
    for start in range(0, len(codes), block):
        block_codes = codes[start : start + block]
        scores = norms - 2 * (block_codes @ centroids.T)
        nearest[start : start + block] = np.argmin(scores, axis=1)
        squared = scores[np.arange(len(scores)), nearest[start : start + block]]
        distances[start : start + block] = squared + np.einsum("ij,ij->i", block_codes, block_codes)
    return nearest, distances


def _finish(info, mean, components, centroids, assigned, codes) -> IvfIndexData:
    order = np.argsort(assigned, kind="stable")
    return IvfIndexData(info, mean, components, centroids, assigned.astype(np.int32), codes[order])


_DEPTH_KEYS = ("lists", "candidates")
_REBUILD = "Rebuild the index with precompute.py --index approximate, or serve the catalogue with --search exact."


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"{path} could not be read as JSON ({exc}). {_REBUILD}") from exc
    if not isinstance(info, dict) or info.get("kind") != KIND:
        raise IndexFileError(f"{path} is not an index of kind {KIND!r}. {_REBUILD}")
    for key in ("dims", "lists", "trained_rows", "added_since_training"):
        if type(info.get(key)) is not int or info[key] < (1 if key in ("dims", "lists") else 0):
            raise IndexFileError(f"{path} has no valid {key!r}. {_REBUILD}")
    if type(info.get("far")) not in (int, float) or not math.isfinite(info["far"]):
        raise IndexFileError(f"{path} has no valid 'far'. {_REBUILD}")
    search = info.get("search")  # absent from an index made before the depth was measured: DEFAULT_DEPTH
    if search is not None and not (
        isinstance(search, dict) and all(type(search.get(key)) is int and search[key] >= 1 for key in _DEPTH_KEYS)
    ):
        raise IndexFileError(f"{path} has no valid search depth ('lists', 'candidates' under 'search'). {_REBUILD}")
    return info


def _read_array(root: Path, name: str, dtype, shape: tuple, mmap: bool = False) -> np.ndarray:
    path = root / name
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, EOFError, ValueError) as exc:
        raise IndexFileError(f"{path} could not be read as a plain .npy array ({exc}). {_REBUILD}") from exc
    if array.dtype != dtype or array.shape != shape:
        raise IndexFileError(
            f"{path} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}: it does not belong to "
            f"this catalogue's embeddings. {_REBUILD}"
        )
    return array
