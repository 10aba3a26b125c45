"""Leave-one-out retrieval quality of a bundle: precision@k and mAP@k against a metadata label.

Usage:
    python -m fashion_search.evaluate bundles/kaggle --label articleType
    python -m fashion_search.evaluate bundles/kaggle --label baseColour --k 10 --json

Every labelled product is used as a query against all the other labelled products (itself excluded);
a neighbour is relevant when it has the same label value as the query. Definitions, for a query whose
label is shared by R other products and whose k nearest others have relevance rel_1..rel_k (rank order):

    P@k  = (rel_1 + ... + rel_k) / k
    AP@k = (1 / min(k, R)) * sum_{i=1..k} P@i * rel_i

Its own nearest-neighbour ranking rather than fashion_search.index: a metric must not depend on how a BLAS build
rounds ties, and over every product as a query it is also faster than scikit-learn's kneighbors on 2 cores.

Choices, all deliberate:
  * Ranking is by euclidean distance, computed as ||x||^2 - 2 q.x in float32 (for the unit rows of a bundle
    this is the dot-product order). Equal distances are broken by the lower row index first. Rows that are
    bit-identical are always treated as tied: BLAS may round two identical columns of a matrix product
    differently, so their scores are made identical before ranking.
  * Rows whose label is missing (None, or an empty/blank string) are left out entirely -- neither queries
    nor candidates -- because whether they are relevant is unknown, and counting them as misses would
    charge the model for gaps in the catalogue.
  * A query whose label no other product shares (R = 0) can only score P@k = 0 and AP@k = 0 (taking
    0/0 as 0). Such queries are not counted in the means -- no ranking could do better on them, and
    counting them would make mAP@k = 1 unreachable -- but the products stay in as candidates (known
    misses for everybody else). "count" is the number of queries that were counted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_K = 5
DEFAULT_BLOCK_SIZE = 1024
RANDOM_WEIGHTS = "random weights: these figures mean nothing"  # said of a bundle made with --weights random
_CHUNK_WIDTH = 64  # columns per chunk when bounding the k-th smallest score (see _top_k_block)


def nearest_other_rows(
    embeddings: np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The k nearest other rows of each query row, nearest first, ties to the lower row index.

    Args:
        embeddings: (n, d) float rows; each query is ranked against all of them except itself.
        k: neighbours per query, 1 <= k <= n - 1.
        queries: row indices to query (default: every row).
        block_size: query rows scored at once; memory is about block_size * n * 4 bytes, never n * n.
        progress: called with the number of queries finished after each block.
    Returns:
        (len(queries), k) int64 row indices.
    """
    x = _as_rows(embeddings)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and n - 1 = {n - 1}, got {k}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"query rows must be in [0, {n}), got {rows.min()}..{rows.max()}")

    sq_norms = np.einsum("ij,ij->i", x, x)
    copies, originals = _duplicate_rows(x)
    result = np.empty((rows.size, k), dtype=np.int64)
    for start in range(0, rows.size, block_size):
        block = rows[start : start + block_size]
        scores = x[block] @ x.T  # (b, n) float32: the only large allocation
        scores *= -2.0
        scores += sq_norms  # ||x||^2 - 2 q.x: squared distance minus the per-query constant ||q||^2
        if copies.size:
            scores[:, copies] = scores[:, originals]
        scores[np.arange(block.size), block] = np.inf  # a product is not its own neighbour
        result[start : start + block.size] = _top_k_block(scores, k)
        if progress is not None:
            progress(block.size)
    return result


def evaluate_leave_one_out(
    embeddings: np.ndarray,
    labels: Sequence[str | None],
    k: int = DEFAULT_K,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    label: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Leave-one-out precision@k and mAP@k of `embeddings` against `labels` (see the module docstring).

    Args:
        embeddings: (n, d) float32, unit rows (one per product).
        labels: n label values; None or a blank string means missing (the row is left out).
        k: neighbours per query; must be below the number of labelled rows.
        block_size: query rows scored at once (memory ~ block_size * n * 4 bytes).
        label: the label column's name, copied into the result.
        progress: called with the number of queries finished after each block.
    Returns:
        {"label", "k", "count", "precision_at_k", "map_at_k",
         "per_label": {value: {"count", "precision_at_k", "map_at_k"}}}, per_label ordered by count
        (descending) then value; label values that no two products share do not appear.
    Raises:
        ValueError: bad shapes, k out of range, or no product shares its label with another.
    """
    x = _as_rows(embeddings)
    if len(labels) != x.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {x.shape[0]} embeddings")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    kept = np.array([i for i, value in enumerate(labels) if not _is_missing(value)], dtype=np.int64)
    if k > kept.size - 1:
        raise ValueError(f"k={k} needs at least k + 1 labelled products, got {kept.size}")
    values, codes = np.unique(np.array([str(labels[i]) for i in kept]), return_inverse=True)
    sizes = np.bincount(codes, minlength=values.size)
    others = sizes[codes] - 1  # R: how many other products share each row's label
    queries = np.flatnonzero(others > 0)
    if queries.size == 0:
        raise ValueError("no product shares its label with another product; nothing to evaluate")

    candidates = x if kept.size == x.shape[0] else x[kept]  # no 360 MB copy at 44k when nothing is missing
    neighbours = nearest_other_rows(candidates, k, queries=queries, block_size=block_size, progress=progress)
    hits = codes[neighbours] == codes[queries][:, None]  # (q, k) relevance in rank order
    precision = hits.sum(axis=1) / k
    precision_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    average_precision = (precision_at_i * hits).sum(axis=1) / np.minimum(k, others[queries])

    query_codes = codes[queries]
    counts = np.bincount(query_codes, minlength=values.size)
    precision_sums = np.bincount(query_codes, weights=precision, minlength=values.size)
    ap_sums = np.bincount(query_codes, weights=average_precision, minlength=values.size)
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], values[c]))
    return {
        "label": label,
        "k": int(k),
        "count": int(queries.size),
        "precision_at_k": float(precision.mean()),
        "map_at_k": float(average_precision.mean()),
        "per_label": {
            str(values[c]): {
                "count": int(counts[c]),
                "precision_at_k": float(precision_sums[c] / counts[c]),
                "map_at_k": float(ap_sums[c] / counts[c]),
            }
            for c in order
        },
    }


def _as_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty (n, d) array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinity")
    return x


def _is_missing(value: str | None) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _duplicate_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(copies, originals): each row bit-identical to an earlier one, and the first such row."""
    first: dict[bytes, int] = {}
    copies, originals = [], []
    for i, row in enumerate(x):
        # + 0.0 turns -0.0 into 0.0 (equal values, equal keys); a digest keeps the dict small at n = 44k
        key = hashlib.blake2b((row + np.float32(0.0)).tobytes(), digest_size=16).digest()
        j = first.setdefault(key, i)
        if j != i and np.array_equal(x[i], x[j]):
            copies.append(i)
            originals.append(j)
    return np.array(copies, dtype=np.int64), np.array(originals, dtype=np.int64)


def _top_k_block(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest scores of each row, ascending, ties to the lower index.

    Rather than argpartition over every row (slow at n = 44k), bound the k-th smallest score from
    above by the k-th smallest of the chunk minima -- k distinct chunks each hold a score at most that
    large -- keep the few scores under the bound, and sort just those by (row, score, column).
    """
    b, n = scores.shape
    width = max(1, min(_CHUNK_WIDTH, n // (k + 1)))  # >= k + 1 chunks, so >= k finite minima
    chunk_minima = np.minimum.reduceat(scores, np.arange(0, n, width), axis=1)
    bound = np.partition(chunk_minima, k - 1, axis=1)[:, k - 1]
    rows, cols = np.nonzero(scores <= bound[:, None])
    order = np.lexsort((cols, scores[rows, cols], rows))
    starts = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=b))[:-1]))
    return cols[order][starts[:, None] + np.arange(k)]


# ---------------------------------------------------------------- command line


def _label_value(value: object) -> str | None:
    """A metadata value as a label string; None for missing (absent, null, NaN, blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text.strip() else None


def format_table(result: dict, *, missing: int = 0, unshared: int = 0) -> str:
    """The result as aligned text: an overall line, then one line per label value (largest first)."""
    k = result["k"]
    rows = [("overall", result)] + list(result["per_label"].items())
    name_width = max(len(str(result["label"] or "label")), *(len(name) for name, _ in rows))
    count_width = max(len("count"), len(str(result["count"])))
    lines = [
        f"{str(result['label'] or 'label'):<{name_width}}  {'count':>{count_width}}  {f'P@{k}':>7}  {f'mAP@{k}':>7}"
    ]
    for name, stats in rows:
        lines.append(
            f"{name:<{name_width}}  {stats['count']:>{count_width}}"
            f"  {stats['precision_at_k']:>7.4f}  {stats['map_at_k']:>7.4f}"
        )
    notes = []
    if missing:
        notes.append(f"{missing} without a value")
    if unshared:
        notes.append(f"{unshared} whose value no other product has")
    if notes:
        lines.append(f"not counted as queries: {', '.join(notes)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fashion_search.evaluate",
        description="Leave-one-out precision@k and mAP@k of a bundle against one metadata column.",
    )
    parser.add_argument("bundle", help="bundle directory (from precompute.py, built with metadata)")
    parser.add_argument("--label", required=True, help="metadata column that defines relevance, e.g. articleType")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours per query (default {DEFAULT_K})")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="queries scored at once")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be at least 1, got {args.k}")
    if args.block_size < 1:
        parser.error(f"--block-size must be at least 1, got {args.block_size}")

    from fashion_search.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle, verify_images=False)  # only embeddings and metadata are used (always hashed)
    except BundleError as e:
        parser.error(f"cannot load bundle {args.bundle}: {e}")
    if bundle.metadata is None:
        parser.error(f"bundle {args.bundle} has no metadata; build it with a styles.csv to evaluate against labels")
    columns = sorted({key for row in bundle.metadata if row for key in row})
    if args.label not in columns:
        parser.error(f"unknown label column {args.label!r}; available: {', '.join(columns) or '(none)'}")

    labels = [_label_value(row.get(args.label)) if row else None for row in bundle.metadata]
    labelled = Counter(value for value in labels if value is not None)
    n = sum(labelled.values())
    if args.k >= n:
        parser.error(f"--k must be below the number of products with a {args.label!r} ({n}), got {args.k}")

    from tqdm import tqdm

    unshared = sum(1 for count in labelled.values() if count == 1)
    with tqdm(total=n - unshared, desc="queries", unit="q", disable=args.quiet or args.json, file=sys.stderr) as bar:
        try:
            result = evaluate_leave_one_out(
                bundle.embeddings, labels, args.k, args.block_size, label=args.label, progress=bar.update
            )
        except ValueError as e:
            parser.error(str(e))
    weights = bundle.weights  # the fingerprint of the weights that made the vectors, from its manifest
    random_weights = weights.startswith("random")
    if args.json:
        print(json.dumps({**result, "weights": weights}))
        if random_weights:
            print(RANDOM_WEIGHTS, file=sys.stderr)
    else:
        print(f"weights: {weights}")
        if random_weights:
            print(RANDOM_WEIGHTS)
        print(format_table(result, missing=len(labels) - n, unshared=unshared))
    return 0


if __name__ == "__main__":
    sys.exit(main())
