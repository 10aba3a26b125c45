"""Load: 8 concurrent gradio_client clients x 50 requests, good and bad uploads mixed, against `python app.py`.

Every good upload must get exactly the products `Searcher` gives for it, every bad one its own message; nothing
else may come back, and the server log must show no traceback. RSS of the server is printed before and after
(no timing or memory asserts: this machine's numbers are not a contract).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from app_runner import AppProcess, app_env, free_port
from conftest import draw_product, embed_files
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from hostile_corpus import build_corpus

from fashion_search.bundle import load_bundle
from fashion_search.imaging import ImageError, open_image
from fashion_search.search import Searcher

pytestmark = pytest.mark.slow  # the app under 8 clients

CLIENTS = 8
REQUESTS_PER_CLIENT = 50
BAD_SHARE = 0.3
SEED = 8
ROUNDS = int(os.environ.get("LOAD_ROUNDS", "1"))  # more rounds show whether the server's memory levels off
TIE_GAP = 1e-4  # queries whose top-6 distances lie closer than this are left out: concurrent requests share
# forward passes, batch composition moves a vector by ~1e-6, and a near-tie could then swap two products fairly


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(bundle_dir, weights_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("load-app")
    port = free_port()
    with AppProcess(
        ["--catalog", str(bundle_dir), "--weights", str(weights_file), "--port", str(port)],
        app_env(folder),
        folder / "app.log",
    ) as app:
        app.url = app.wait_ready(port)
        yield app


def test_concurrent_clients_get_only_right_answers_and_our_messages(server, embedder, bundle_dir, tmp_path):
    searcher = Searcher(embedder, load_bundle(bundle_dir))
    folder = tmp_path / "uploads"
    folder.mkdir()

    good: dict[Path, list[tuple[str, float]]] = {}  # upload -> the searcher's answer
    rng = np.random.default_rng(SEED)
    candidates = [(f"query{i}.jpg", draw_product(rng, (90, 120))) for i in range(16)]
    for name, picture in candidates:
        path = folder / name
        picture.save(path, quality=90)
        good[path] = None
    bad: dict[Path, str] = {}  # upload -> our message
    for upload in build_corpus():
        path = folder / upload.name
        path.write_bytes(upload.data)
        if upload.good:
            good[path] = None
        else:
            with pytest.raises(ImageError) as refused:
                open_image(path)
            bad[path] = str(refused.value)
    for path in list(good):
        matches = searcher.matches(embed_files(searcher.embedder, [path]), k=6)[0]
        distances = [m.distance for m in matches]
        if min(np.diff(distances)) < TIE_GAP:
            del good[path]
        else:
            good[path] = [(m.filename, m.distance) for m in matches[:5]]
    assert len(good) >= 12 and len(bad) >= 10

    plans = []
    pick = random.Random(SEED)
    for _ in range(CLIENTS):
        plans.append(
            [
                pick.choice(sorted(bad)) if pick.random() < BAD_SHARE else pick.choice(sorted(good))
                for _ in range(REQUESTS_PER_CLIENT)
            ]
        )
    outcomes = {"right": 0, "message": 0, "wrong": [], "error": []}
    lock = threading.Lock()

    def client_run(plan: list[Path]) -> None:
        client = Client(server.url, verbose=False)
        for path in plan:
            try:
                _, listing = client.predict(handle_file(str(path)), api_name="/recommend")
            except AppError as exc:
                with lock:
                    if path in bad and str(exc) == bad[path]:
                        outcomes["message"] += 1
                    else:
                        outcomes["error"].append((path.name, repr(exc)))
                continue
            except Exception as exc:  # a transport failure, a timeout: a server error for this test
                with lock:
                    outcomes["error"].append((path.name, repr(exc)))
                continue
            got = [(row["filename"], row["distance"]) for row in listing]
            with lock:
                if (
                    path in good
                    and len(got) == 5
                    and all(g[0] == e[0] and abs(g[1] - e[1]) <= 1e-5 for g, e in zip(got, good[path]))
                ):
                    outcomes["right"] += 1
                else:
                    outcomes["wrong"].append((path.name, got, good.get(path)))

    rss = [rss_mb(server.process.pid)]
    started = time.monotonic()
    for _ in range(ROUNDS):
        threads = [threading.Thread(target=client_run, args=(plan,)) for plan in plans]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=900)
        assert not any(thread.is_alive() for thread in threads)
        rss.append(rss_mb(server.process.pid))
    seconds = time.monotonic() - started

    total = CLIENTS * REQUESTS_PER_CLIENT * ROUNDS
    print(
        f"\nload: {ROUNDS} x {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests = {total} in {seconds:.1f} s "
        f"({total / seconds:.1f} requests/s): {outcomes['right']} right answers, {outcomes['message']} refusals with "
        f"our message, {len(outcomes['wrong'])} wrong, {len(outcomes['error'])} errors; "
        f"server RSS {rss[0]:.0f} MB before, {' MB, '.join(f'{r:.0f}' for r in rss[1:])} MB after each round"
    )
    assert outcomes["wrong"] == []
    assert outcomes["error"] == []
    assert outcomes["right"] + outcomes["message"] == total
    assert outcomes["message"] > 0 and outcomes["right"] > 0
    assert server.process.poll() is None
    assert "Traceback" not in server.log.read_text()
    _, listing = Client(server.url, verbose=False).predict(handle_file(str(next(iter(good)))), api_name="/recommend")
    assert [row["filename"] for row in listing] == [name for name, _ in next(iter(good.values()))]
