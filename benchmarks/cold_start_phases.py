"""Where app.py's cold start goes: each start-up step timed in a fresh process, with the memory high-water mark.

python benchmarks/cold_start_phases.py BUNDLE_DIR WEIGHTS.h5     # prints one JSON object
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(bundle: str, weights: str) -> dict:
    phases = []
    start = last = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        phases.append({"phase": name, "seconds": round(now - last, 3), "peak_rss_mb": round(peak_mb())})
        last = now

    import gradio  # noqa: F401

    mark("import gradio")
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    mark("import tensorflow + keras")
    from fashion_search.embedder import Embedder

    embedder = Embedder.load(weights)
    mark("build ResNet50 + load weights")
    from fashion_search.bundle import load_bundle

    load_bundle(bundle, verify_images=False)
    mark("load_bundle(verify_images=False): data files hashed and checked")
    loaded = load_bundle(bundle)
    mark("load_bundle(): the same plus every image hashed (the app's call)")
    from fashion_search.search import Searcher
    from fashion_search.webapp import Recommender

    recommender = Recommender(Searcher(embedder, loaded))
    mark("Searcher: index fit, filter columns")
    from PIL import Image

    recommender.recommend(Image.new("RGB", (224, 224), "white"))
    mark("warm-up query (first forward traces the graph)")
    recommender.recommend(Image.new("RGB", (224, 224), "grey"))
    mark("a second query")
    return {"total_seconds": round(time.perf_counter() - start, 3), "phases": phases}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
