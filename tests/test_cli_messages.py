"""What a command-line user and an API caller see: precompute's lines, a push with the Hub unreachable, the app's start
lines and page banner, a raw HTTP call short of inputs (issue 33). Each asserts the exact line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from app_runner import ROOT, app_env, demo_app, free_port
from conftest import make_bundle, make_catalogue
from PIL import Image

pytestmark = pytest.mark.slow  # subprocesses: precompute.py, `python app.py`


def precompute(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "precompute.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )


def test_a_push_with_the_hub_unreachable_says_so_in_one_line(tmp_path):
    pictures = {}
    for i, colour in enumerate(["red", "navy"]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), colour).save(path)
        pictures[f"{1000 + i}.png"] = path.read_bytes()
    bundle = make_bundle(tmp_path / "bundle", pictures)
    hub = f"http://127.0.0.1:{free_port()}"  # a loopback port nothing listens on: the connection is refused
    env = app_env(tmp_path, HF_ENDPOINT=hub, HF_TOKEN="hf_test")

    done = precompute(["--out", bundle, "--push-to-hub", "owner/catalogue"], env)

    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        f"error: cannot reach the Hub at {hub} (ConnectError: [Errno 111] Connection refused). Check the network "
        "and HF_ENDPOINT, then run the same command again: the push resumes where it stopped."
    ]


def test_precompute_lists_each_skipped_file_once_and_counts_the_files_it_ignores(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    make_catalogue(images, 7)
    (images / "notes.jpg").write_text("not a picture, named as one")
    (images / "readme.txt").write_text("not a picture, named as none")

    done = precompute([images, "--out", out, "--weights", "random"], app_env(tmp_path))

    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        rf"7 images in {re.escape(str(out))}: 7 embedded \(\d+\.\d images/s\), 0 resumed, 0 reused, 1 skipped, "
        r"in \d+\.\d s; other files ignored, not pictures by their names: 1 \.txt\n",
        done.stdout,
    ), done.stdout
    lines = re.split(r"[\r\n]+", done.stderr)
    assert [line for line in lines if "notes.jpg" in line] == [
        "skipped notes.jpg: This file is not an image that can be read."  # no advice to upload: this is a catalogue
    ]
    assert "Please upload" not in done.stderr and "readme.txt" not in done.stderr
    # The progress bar counts the images embedded, as the summary does, and the skipped file beside them.
    bar = [line for line in lines if line.startswith("embedding:")][-1]
    assert re.fullmatch(r"embedding: 100%\|█+\| 7/7 \[[^\]]+, 1 skipped\]", bar.rstrip()), bar


# ---------------------------------------------------------------- the app: `python app.py --weights random`


def test_the_start_lines_give_no_advice_an_app_py_user_cannot_follow():
    log = demo_app().log.read_text().splitlines()
    assert not [line for line in log if "share=True" in line]
    assert log.count("* To open it from other machines: --host 0.0.0.0, or deploy it as a Space (see the README).") == 1
    assert log.index("* To open it from other machines: --host 0.0.0.0, or deploy it as a Space (see the README).") == (
        next(i for i, line in enumerate(log) if line.startswith("* Running on local URL:")) + 1
    )


def test_the_banner_names_the_flag_the_weights_were_given_with():
    page = httpx.get(demo_app().url, timeout=30).text
    assert "⚠ This app runs with random model weights (--weights random): the results are not meaningful." in page
    assert "FASHION_WEIGHTS=random" not in page


def call_raw(url: str, endpoint: str, data: list) -> tuple[str, dict]:
    """(the event, its data) of a call over Gradio's raw HTTP API, as curl would make it."""
    posted = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30)
    posted.raise_for_status()
    answer = httpx.get(f"{url}gradio_api/call/{endpoint}/{posted.json()['event_id']}", timeout=120).text
    event = re.search(r"^event: (\w+)$", answer, re.M).group(1)
    return event, json.loads(re.search(r"^data: (.*)$", answer, re.M).group(1))


def test_a_raw_http_call_short_of_inputs_is_told_what_to_send_and_logs_nothing():
    demo = demo_app()
    before = len(demo.log.read_text().splitlines())
    refused = {
        "recommend": "/recommend takes 6 inputs, every one of them, in this order: image, top_k, master_category, "
        "article_type, near_duplicate_distance, region; got 1.",
        "similar": "/similar takes 4 inputs, every one of them, in this order: filename, top_k, master_category, "
        "article_type; got 1.",
    }
    for endpoint, message in refused.items():
        event, data = call_raw(demo.url, endpoint, [None])
        assert (event, data["error"]) == ("error", message)
    # Every input sent: answered as usual.
    event, data = call_raw(demo.url, "similar", ["10000.png", 3, [], []])
    assert event == "complete" and [row["rank"] for row in data[1]] == [1, 2, 3]
    assert demo.log.read_text().splitlines()[before:] == []


def test_the_evaluation_of_a_random_weights_bundle_says_its_figures_mean_nothing(tmp_path):
    """The demo catalogue's bundle, made with random weights: the first lines name them."""
    bundle = next(Path(demo_app().log.parent, "cache").glob("demo-*"))
    done = subprocess.run(
        [sys.executable, "-m", "fashion_search.evaluate", str(bundle), "--label", "articleType", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["weights: random:0", "random weights: these figures mean nothing"]
    assert done.stdout.splitlines()[2].split() == ["articleType", "count", "P@5", "mAP@5"]  # then the table
