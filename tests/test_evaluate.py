"""Leave-one-out evaluation: equal to a direct full-matrix numpy computation of the same definition, and the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fashion_search.evaluate import RANDOM_WEIGHTS, evaluate_leave_one_out, format_table, nearest_other_rows

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the reference: obviously correct, n x n


def _missing(value) -> bool:
    return value is None or not value.strip()


def reference_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Full n x n euclidean distances in float64, each row ranked by a stable argsort, self removed."""
    x = x.astype(np.float64)
    distances = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    ranked = []
    for i in range(len(x)):
        order = [j for j in np.argsort(distances[i], kind="stable") if j != i]
        ranked.append(order[:k])
    return np.array(ranked, dtype=np.int64).reshape(len(x), k)


def reference_evaluate(x: np.ndarray, labels: list, k: int, label=None) -> dict:
    """The module's definition, one query at a time."""
    kept = [i for i, value in enumerate(labels) if not _missing(value)]
    names = [labels[i] for i in kept]
    neighbours = reference_neighbours(x[kept], k)
    per_query = {}  # label value -> list of (P@k, AP@k)
    for q, value in enumerate(names):
        others = sum(1 for j, other in enumerate(names) if j != q and other == value)
        if others == 0:
            continue  # not counted in the means (documented choice)
        rel = [names[j] == value for j in neighbours[q]]
        precision = sum(rel) / k
        ap = sum(sum(rel[: i + 1]) / (i + 1) for i in range(k) if rel[i]) / min(k, others)
        per_query.setdefault(value, []).append((precision, ap))
    everything = [pair for pairs in per_query.values() for pair in pairs]
    ordered = sorted(per_query, key=lambda v: (-len(per_query[v]), v))
    return {
        "label": label,
        "k": k,
        "count": len(everything),
        "precision_at_k": sum(p for p, _ in everything) / len(everything),
        "map_at_k": sum(a for _, a in everything) / len(everything),
        "per_label": {
            v: {
                "count": len(per_query[v]),
                "precision_at_k": sum(p for p, _ in per_query[v]) / len(per_query[v]),
                "map_at_k": sum(a for _, a in per_query[v]) / len(per_query[v]),
            }
            for v in ordered
        },
    }


def assert_same_result(actual: dict, expected: dict) -> None:
    assert list(actual) == ["label", "k", "count", "precision_at_k", "map_at_k", "per_label"]
    assert list(actual["per_label"]) == list(expected["per_label"])  # same values, same order
    for key in ("label", "k", "count"):
        assert actual[key] == expected[key]
    for key in ("precision_at_k", "map_at_k"):
        assert actual[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15)
    for value, stats in expected["per_label"].items():
        got = actual["per_label"][value]
        assert list(got) == ["count", "precision_at_k", "map_at_k"]
        assert got["count"] == stats["count"]
        assert got["precision_at_k"] == pytest.approx(stats["precision_at_k"], rel=1e-12, abs=1e-15)
        assert got["map_at_k"] == pytest.approx(stats["map_at_k"], rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- generated data


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def labelled_data(seed: int, n: int = 61, d: int = 6) -> tuple[np.ndarray, list]:
    """Unit rows with bit-identical duplicates; labels from a few values, one single-member value, some missing."""
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, n, d)
    copies = rng.choice(n, size=12, replace=False)
    x[copies[6:]] = x[copies[:6]]  # six duplicated vectors: exact ties, equal to distance 0 from their twin
    labels = [str(v) for v in rng.choice(["coat", "shoe", "watch", "bag"], size=n, p=[0.4, 0.3, 0.2, 0.1])]
    labels[int(rng.integers(n))] = "solo"  # a label no other product has
    for i, missing in zip(rng.choice(n, size=4, replace=False), [None, "", "  ", None]):
        labels[i] = missing
    assert_separated(x)
    return x, labels


def assert_separated(x: np.ndarray) -> None:
    """Precondition of comparing float32 scores with float64 distances: every two distances from a query are
    either exactly equal (duplicates) or far apart compared with float32 rounding."""
    x64 = x.astype(np.float64)
    squared = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(axis=2)  # float32 scores err by ~1e-7 here
    for row in squared:
        gaps = np.diff(np.sort(row))
        assert np.all((gaps == 0) | (gaps > 1e-5)), "the generated data has a near-tie; pick another seed"


# ---------------------------------------------------------------- the pure function against the reference


@pytest.mark.parametrize("seed", [1, 2, 3, 8, 10])  # seeds whose data pass assert_separated
@pytest.mark.parametrize("k", [1, 3, 7])
def test_matches_the_full_matrix_reference(seed, k):
    x, labels = labelled_data(seed)
    expected = reference_evaluate(x, labels, k, label="articleType")
    for block_size in (5, 13, 1024):  # smaller than n and not dividing n = 61 (minus missing), and one block
        assert_same_result(evaluate_leave_one_out(x, labels, k, block_size, label="articleType"), expected)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_neighbours_equal_a_stable_argsort_of_all_distances(seed):
    x, _ = labelled_data(seed)
    expected = reference_neighbours(x, 8)
    for block_size in (1, 7, 60, 61, 1000):
        np.testing.assert_array_equal(nearest_other_rows(x, 8, block_size=block_size), expected)
    queries = np.array([60, 3, 3, 17])
    np.testing.assert_array_equal(nearest_other_rows(x, 8, queries=queries, block_size=3), expected[queries])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_integer_rows_with_many_exact_ties(data):
    """Small-integer rows make every float32 distance exact, so ties between different rows are real ties:
    the order must be the reference's stable order (lower row index first), whatever the block size."""
    n = data.draw(st.integers(2, 30), label="n")
    values = data.draw(st.lists(st.integers(-2, 2), min_size=n * 3, max_size=n * 3), label="values")
    x = np.array(values, dtype=np.float32).reshape(n, 3)
    labels = data.draw(st.lists(st.sampled_from(["a", "b", "c", "", None]), min_size=n, max_size=n), label="labels")
    labelled = sum(not _missing(v) for v in labels)
    k = data.draw(st.integers(1, max(1, labelled - 1)), label="k")
    block_size = data.draw(st.integers(1, n + 2), label="block_size")

    np.testing.assert_array_equal(
        nearest_other_rows(x, min(k, n - 1), block_size=block_size), reference_neighbours(x, min(k, n - 1))
    )
    shared = {v for v in labels if not _missing(v) and labels.count(v) > 1}
    if k > labelled - 1:  # fewer than two labelled: k is drawn at most labelled - 1 otherwise
        with pytest.raises(ValueError, match=rf"^k={k} needs at least k \+ 1 labelled products, got {labelled}$"):
            evaluate_leave_one_out(x, labels, k, block_size)
    elif not shared:
        with pytest.raises(ValueError, match="^no product shares its label with another product; nothing to evaluate$"):
            evaluate_leave_one_out(x, labels, k, block_size)
    else:
        assert_same_result(evaluate_leave_one_out(x, labels, k, block_size), reference_evaluate(x, labels, k))


def test_ties_go_to_the_lower_row_index():
    x = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [-1, 0]], dtype=np.float32)
    # rows 1, 2, 3 are one point: from it, its two other copies; from row 0 or 4, all three at distance sqrt(2)
    np.testing.assert_array_equal(nearest_other_rows(x, 2, block_size=2), [[1, 2], [2, 3], [1, 3], [1, 2], [1, 2]])


@pytest.mark.parametrize("block_size", [1, 1024])
def test_bit_identical_rows_tie_even_where_blas_rounds_their_columns_differently(block_size):
    """A matrix product may round two identical columns differently (OpenBLAS does, here, for one query row
    against column 1500 of 3001 at d = 2048); duplicate products must still come out in row order."""
    rng = np.random.default_rng(7)
    x = unit_rows(rng, 3001, 2048)
    twins = [10, 1500, 1717, 2999]
    x[twins] = x[10]
    queries = np.arange(20, 28)
    near = x[10] + unit_rows(rng, len(queries), 2048)  # about 0.7 cosine to the twins, ~0 to the rest
    x[queries] = near / np.linalg.norm(near, axis=1, keepdims=True)
    neighbours = nearest_other_rows(x, 4, queries=np.concatenate([queries, [10, 2999]]), block_size=block_size)
    for row in neighbours[: len(queries)]:
        np.testing.assert_array_equal(row, twins)  # all four at one distance: row order
    np.testing.assert_array_equal(neighbours[-2][:3], [1500, 1717, 2999])
    np.testing.assert_array_equal(neighbours[-1][:3], [10, 1500, 1717])


# ---------------------------------------------------------------- the definition on hand-worked cases


def circle(angles_degrees) -> np.ndarray:
    a = np.radians(np.asarray(angles_degrees, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_precision_and_average_precision_by_hand():
    x = circle([0, 10, 25, 45, 70])
    labels = ["a", "a", "b", "a", "b"]
    result = evaluate_leave_one_out(x, labels, k=3, label="kind")
    # query  0 (a, R=2): 10 a, 25 b, 45 a -> rel 1 0 1: P = 2/3, AP = (1/1 + 2/3) / 2 = 5/6
    # query 10 (a, R=2):  0 a, 25 b, 45 a -> rel 1 0 1: P = 2/3, AP = 5/6
    # query 45 (a, R=2): 25 b, 70 b, 10 a -> rel 0 0 1: P = 1/3, AP = (1/3) / 2 = 1/6
    # query 25 (b, R=1): 10 a, 45 a,  0 a -> rel 0 0 0: P = 0,   AP = 0
    # query 70 (b, R=1): 45 a, 25 b, 10 a -> rel 0 1 0: P = 1/3, AP = (1/2) / 1 = 1/2
    assert result["count"] == 5
    assert result["precision_at_k"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 0 + 1 / 3) / 5)
    assert result["map_at_k"] == pytest.approx((5 / 6 + 5 / 6 + 1 / 6 + 0 + 1 / 2) / 5)
    assert result["per_label"] == {
        "a": {"count": 3, "precision_at_k": pytest.approx(5 / 9), "map_at_k": pytest.approx(11 / 18)},
        "b": {"count": 2, "precision_at_k": pytest.approx(1 / 6), "map_at_k": pytest.approx(1 / 4)},
    }


def test_k_1_is_nearest_neighbour_accuracy():
    x = circle([0, 5, 90, 95, 180])
    result = evaluate_leave_one_out(x, ["a", "a", "b", "c", "c"], k=1)
    # 0 -> 5 hit, 5 -> 0 hit, 95 -> 90 miss, 180 -> 95 hit; 90 is the only "b", so it is no query
    assert result["count"] == 4
    assert result["precision_at_k"] == result["map_at_k"] == pytest.approx(3 / 4)
    assert result["per_label"] == {
        "a": {"count": 2, "precision_at_k": 1.0, "map_at_k": 1.0},
        "c": {"count": 2, "precision_at_k": 0.5, "map_at_k": 0.5},
    }


def test_a_perfect_ranking_scores_one_even_when_r_is_below_k():
    x = circle([0, 1, 2, 100, 101, 102, 103, 104])
    result = evaluate_leave_one_out(x, ["a"] * 3 + ["b"] * 5, k=5)
    assert result["map_at_k"] == 1.0  # min(k, R) normalises the short "a" lists
    assert result["per_label"]["a"]["precision_at_k"] == pytest.approx(2 / 5)  # P@k cannot exceed R / k
    assert result["per_label"]["b"]["precision_at_k"] == pytest.approx(4 / 5)


def test_unshared_labels_are_not_queries_but_stay_candidates():
    # "solo" sits between the two "a" products and steals the nearest place from each of them.
    x = circle([0, 20, 40, 200, 210])
    labels = ["a", "solo", "a", "b", "b"]
    result = evaluate_leave_one_out(x, labels, k=1)
    assert result["count"] == 4
    assert "solo" not in result["per_label"]
    assert result["per_label"]["a"] == {"count": 2, "precision_at_k": 0.0, "map_at_k": 0.0}
    assert result["per_label"]["b"] == {"count": 2, "precision_at_k": 1.0, "map_at_k": 1.0}


def test_missing_labels_are_left_out_entirely():
    # The unlabelled rows sit right next to each "a": were they candidates, both "a" queries would miss.
    x = circle([0, 1, 30, 31, 200, 210])
    labels = ["a", None, "a", "  ", "b", "b"]
    result = evaluate_leave_one_out(x, labels, k=1)
    assert result["count"] == 4
    assert result["per_label"]["a"] == {"count": 2, "precision_at_k": 1.0, "map_at_k": 1.0}
    kept = [0, 2, 4, 5]
    assert result == evaluate_leave_one_out(x[kept], [labels[i] for i in kept], k=1)


def test_result_is_json_with_per_label_largest_first():
    x, labels = labelled_data(2)
    result = evaluate_leave_one_out(x, labels, 5, label="articleType")
    assert json.loads(json.dumps(result)) == result
    counts = [(-stats["count"], value) for value, stats in result["per_label"].items()]
    assert counts == sorted(counts)
    assert result["count"] == sum(stats["count"] for stats in result["per_label"].values())
    assert result["label"] == "articleType"
    assert evaluate_leave_one_out(x, labels, 5)["label"] is None


@pytest.mark.parametrize(
    ("labels", "k", "message"),
    [
        (["a", "a", "b"], 0, "k must be at least 1, got 0"),
        (["a", "a", None], 2, re.escape("k=2 needs at least k + 1 labelled products, got 2")),
        (["a", "b", "c"], 1, "no product shares its label with another product"),
        (["a", "a"], 1, "got 2 labels for 3 embeddings"),
    ],
)
def test_bad_arguments_are_refused(labels, k, message):
    with pytest.raises(ValueError, match=message):
        evaluate_leave_one_out(circle([0, 10, 20]), labels, k)


def test_bad_embeddings_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_leave_one_out(np.zeros((3,), np.float32), ["a", "a", "a"], 1)
    with pytest.raises(ValueError, match="NaN or infinity"):
        evaluate_leave_one_out(np.array([[1, 0], [np.nan, 0]], np.float32), ["a", "a"], 1)
    with pytest.raises(ValueError, match="block_size must be at least 1"):
        evaluate_leave_one_out(circle([0, 10]), ["a", "a"], 1, block_size=0)


def test_table_has_aligned_columns_and_notes_what_was_left_out():
    x, labels = labelled_data(1)
    result = evaluate_leave_one_out(x, labels, 3, label="articleType")
    lines = format_table(result, missing=4, unshared=1).splitlines()
    assert lines[0].split() == ["articleType", "count", "P@3", "mAP@3"]
    assert lines[1].split() == [
        "overall",
        str(result["count"]),
        f"{result['precision_at_k']:.4f}",
        f"{result['map_at_k']:.4f}",
    ]
    assert [line.split()[0] for line in lines[2:-1]] == list(result["per_label"])
    assert len({len(line) for line in lines[:-1]}) == 1  # every column lines up
    assert lines[-1] == "not counted as queries: 4 without a value, 1 whose value no other product has"


# ---------------------------------------------------------------- the command line, on a real bundle


def make_bundle(root: Path, x: np.ndarray, metadata: list[dict] | None, weights: str = "random:0") -> Path:
    from PIL import Image

    from fashion_search.bundle import write_bundle

    (root / "images").mkdir(parents=True)
    names = [f"{1000 + i}.png" for i in range(len(x))]
    for i, name in enumerate(names):
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(root / "images" / name)
    write_bundle(
        root,
        embeddings=x,
        filenames=names,
        model={"architecture": "test", "weights": weights},
        preprocessing="test",
        metadata=metadata,
    )
    return root


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "fashion_search.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


@pytest.fixture(scope="module")
def labelled_bundle(tmp_path_factory):
    rng = np.random.default_rng(11)
    x = unit_rows(rng, 40, 2048)
    kinds = ["Tshirts", "Watches", "Casual Shoes", "Tshirts", "Watches"]
    metadata = [
        {"id": 1000 + i, "articleType": kinds[i % 5], "baseColour": ["Blue", "Red"][i % 2], "year": 2012}
        for i in range(40)
    ]
    metadata[3]["baseColour"] = ""  # a missing colour
    del metadata[4]["baseColour"]  # and an absent one
    metadata[5]["articleType"] = "Ties"  # an article type only one product has
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b", x, metadata), x, metadata


def test_cli_json_equals_the_pure_function(labelled_bundle):
    root, x, metadata = labelled_bundle
    done = run_cli(root, "--label", "articleType", "--k", "3", "--json")
    assert done.returncode == 0, done.stderr
    expected = evaluate_leave_one_out(x, [m["articleType"] for m in metadata], 3, label="articleType")
    assert json.loads(done.stdout) == {**expected, "weights": "random:0"}  # the bundle's weights fingerprint
    assert json.loads(done.stdout)["count"] == 39  # the one "Ties" product is not a query
    assert done.stderr.splitlines() == ["random weights: these figures mean nothing"]  # stdout stays JSON


def test_cli_table_leaves_out_missing_values(labelled_bundle):
    root, x, metadata = labelled_bundle
    done = run_cli(root, "--label", "baseColour", "--quiet")
    assert done.returncode == 0, done.stderr
    labels = [m.get("baseColour") or None for m in metadata]
    expected = evaluate_leave_one_out(x, labels, 5, label="baseColour")
    assert done.stdout.splitlines()[:2] == ["weights: random:0", "random weights: these figures mean nothing"]
    assert done.stdout == f"weights: random:0\n{RANDOM_WEIGHTS}\n" + format_table(expected, missing=2) + "\n"
    assert done.stdout.splitlines()[-1] == "not counted as queries: 2 without a value"


def test_cli_names_the_weights_and_says_nothing_more_of_real_ones(tmp_path):
    rng = np.random.default_rng(5)
    metadata = [{"articleType": ["Tshirts", "Watches"][i % 2]} for i in range(12)]
    root = make_bundle(tmp_path / "b", unit_rows(rng, 12, 2048), metadata, weights="imagenet")
    done = run_cli(root, "--label", "articleType", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "weights: imagenet"
    assert done.stdout.splitlines()[1].split() == ["articleType", "count", "P@5", "mAP@5"]
    assert RANDOM_WEIGHTS not in done.stdout + done.stderr


def test_cli_reads_numbers_as_labels(labelled_bundle):
    root, x, _ = labelled_bundle
    done = run_cli(root, "--label", "year", "--k", "39", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result["per_label"]) == ["2012"]
    assert result["precision_at_k"] == result["map_at_k"] == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "colour"], "unknown label column 'colour'; available: articleType, baseColour, id, year"),
        (["--label", "articleType", "--k", "0"], "--k must be at least 1, got 0"),
        (["--label", "articleType", "--k", "40"], "--k must be below the number of products with a 'articleType' (40)"),
        (["--label", "baseColour", "--k", "38"], "--k must be below the number of products with a 'baseColour' (38)"),
    ],
)
def test_cli_refuses_bad_arguments_with_exit_2(labelled_bundle, args, message):
    root, _, _ = labelled_bundle
    done = run_cli(root, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_cli_refuses_a_bundle_without_metadata(tmp_path):
    root = make_bundle(tmp_path / "b", unit_rows(np.random.default_rng(0), 4, 2048), None)
    done = run_cli(root, "--label", "articleType")
    assert done.returncode == 2
    assert f"bundle {root} has no metadata" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_refuses_a_missing_bundle(tmp_path):
    done = run_cli(tmp_path / "nowhere", "--label", "articleType")
    assert done.returncode == 2
    assert "cannot load bundle" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
