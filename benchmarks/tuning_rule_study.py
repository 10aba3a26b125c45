"""How often the depth `approximate.tune` chooses keeps the promise on held-out queries, under two rules, without the
noise of one split (issue 29; benchmarks/RESULTS.md, "Figure 8 with the depth tuned at build").

For a cached figure-8 bundle (benchmarks.bench_ann), each depth's per-query recall@5 and @20 on all 1,000 held-out
real embeddings is predicted by the index's own ranking (`approximate._ranked_scans`, what `tune` ranks depths by);
then DRAWS random splits into 400 tuning and 200 held-out queries: each rule chooses the cheapest depth it accepts on
the 400, and the 200 show whether it keeps recall@5 >= 0.99 and @20 >= 0.98.

    python -m benchmarks.tuning_rule_study --rows 200000 --shapes grown flatter
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import data, real_vectors

DRAWS = 1000
SPLIT = (400, 200)


def curves(shape: str, rows: int) -> dict:
    """{depths, costs, s5, s20}: each depth's (lists, candidates), mean rows scored, per-query shares found."""
    from fashion_search import approximate
    from fashion_search.bundle import load_bundle

    cache = data.CACHE / f"tuning-curves-{shape}-{rows}.npz"
    if cache.is_file():
        return dict(np.load(cache))
    root = data.CACHE / f"ann-bundle-{shape}-{rows}-v2"
    queries = real_vectors.split(real_vectors.real_embeddings(data.weights_file()))[1]
    bundle = load_bundle(root, verify_images=False)
    index = approximate.load(root, bundle.embeddings)
    sample = approximate.Queries(queries, np.full(len(queries), -1))
    truths = approximate._exact_neighbours(bundle.embeddings, sample)
    depths, costs, s5, s20 = [], [], [], []
    for lists, scanned, ranks, fill in approximate._ranked_scans(index, sample, truths):
        for candidates in (c for c in approximate.CANDIDATE_STEPS if c <= min(fill, approximate.MAX_CANDIDATES)):
            depths.append((lists, candidates))
            costs.append(scanned + candidates)
            s5.append(approximate._shares_found(ranks, 5, candidates))
            s20.append(approximate._shares_found(ranks, 20, candidates))
    found = {"depths": np.array(depths), "costs": np.array(costs), "s5": np.array(s5), "s20": np.array(s20)}
    np.savez(cache, **found)
    return found


def study(found: dict, seed: int = 0) -> dict:
    from fashion_search import approximate

    target, promise = approximate.RECALL_TARGET, approximate.RECALL_PROMISE
    shares = {5: found["s5"], 20: found["s20"]}
    order = np.argsort(found["costs"])
    rules = {
        "sample mean >= target": lambda part, k: part.mean(),
        "95 % lower bound >= target": lambda part, k: approximate.lower_bound(part, k),
    }
    out = {}
    for name, estimate in rules.items():
        rng = np.random.default_rng(seed)  # the same draws for each rule
        kept, costs, chosen = [], [], {}
        for _ in range(DRAWS):
            perm = rng.permutation(shares[5].shape[1])
            tuning, held = perm[: SPLIT[0]], perm[SPLIT[0] : sum(SPLIT)]
            pick = order[-1]
            for i in order:
                if all(estimate(shares[k][i, tuning], k) >= target[k] for k in target):
                    pick = i
                    break
            kept.append(all(shares[k][pick, held].mean() >= promise[k] for k in promise))
            costs.append(found["costs"][pick])
            depth = tuple(int(v) for v in found["depths"][pick])
            chosen[depth] = chosen.get(depth, 0) + 1
        top = sorted(chosen, key=lambda d: -chosen[d])[:3]
        out[name] = {"kept": float(np.mean(kept)), "rows": float(np.mean(costs)), "chosen": top}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shapes", nargs="+", default=["grown", "flatter"])
    args = parser.parse_args()
    for shape in args.shapes:
        for name, result in study(curves(shape, args.rows)).items():
            print(
                f"{shape} {args.rows:,}: {name}: held-out {SPLIT[1]} keep the promise in {result['kept']:.1%} of "
                f"{DRAWS} draws; {result['rows']:,.0f} rows scored a query; chosen most {result['chosen']}"
            )


if __name__ == "__main__":
    main()
