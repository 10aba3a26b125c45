"""The README's first Python block, run as written against `python app.py` on the demo catalogue; the API's names as
gradio_client prints them, each accepted by both endpoints."""

from __future__ import annotations

import re

import numpy as np
import pytest
from app_runner import ROOT, demo_app, printed_endpoints
from gradio_client import Client, handle_file
from PIL import Image

from fashion_search.bundle import load_bundle
from fashion_search.demo import example_images

pytestmark = pytest.mark.slow  # starts `python app.py` on the demo catalogue

README_URL = "http://127.0.0.1:7860/"


def first_python_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_first_python_block_runs_on_the_demo(tmp_path, monkeypatch, capsys):
    demo = demo_app()
    block = first_python_block()
    assert README_URL in block and 'api_name="/recommend"' in block and 'api_name="/similar"' in block
    # A photo beside it, as the README says: a coat, taken again (a JPEG of another size).
    coat = next(path for path in example_images() if path.stem == "coat")
    Image.open(coat).convert("RGB").resize((300, 300)).save(tmp_path / "photo.jpg", quality=90)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace(README_URL, demo.url), "README.md", "exec"), namespace)

    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("Loaded as API")]
    assert [line.split()[0] for line in printed] == ["1", "2", "3", "4", "5"]
    assert all(re.fullmatch(r"\d \d{5}\.png \d\.\d+ Fashion-MNIST .+", line) for line in printed), printed
    listing = namespace["listing"]  # the last call's: more like the first result, among the Apparel products
    assert len(listing) == 5 and {row["masterCategory"] for row in listing} == {"Apparel"}
    assert printed[0].split()[1] not in [row["filename"] for row in listing]


def test_every_parameter_view_api_prints_is_accepted_by_name(capsys, tmp_path):
    """Each name as printed, as a keyword, with a value the demo has; the same filter names for both endpoints. Alone
    beside the required first, each value is seen applied: the answer changes from the defaults' as it says."""
    demo = demo_app()
    client = Client(demo.url, verbose=False)
    endpoints = printed_endpoints(client, capsys)
    filters = ["master_category", "article_type"]
    assert endpoints == {
        "/recommend": ["image", "top_k", *filters, "near_duplicate_distance", "region"],
        "/similar": ["filename", "top_k", *filters],
    }
    dress = next(path for path in example_images() if path.stem == "dress")
    values = {
        "image": handle_file(str(dress)),
        "filename": "10000.png",
        "top_k": 3,
        "master_category": ["Apparel"],
        "article_type": ["Dress", "T-shirt/top"],
        "near_duplicate_distance": 0.01,
        "region": "10, 10, 100, 100",
    }
    for endpoint, names in endpoints.items():
        _, listing = client.predict(**{name: values[name] for name in names}, api_name=endpoint)
        assert len(listing) == 3
        assert all(
            row["masterCategory"] == "Apparel" and row["articleType"] in values["article_type"] for row in listing
        )

    # Each alone too, beside the required first, with a value that must change the defaults' answer.
    (bundle_dir,) = [path.parent for path in demo.cache.glob("demo-*/manifest.json")]
    bundle = load_bundle(bundle_dir, verify_images=False)
    vector = {name: bundle.embeddings[row] for row, name in enumerate(bundle.filenames)}
    cropped = tmp_path / "cropped.png"
    Image.open(dress).crop((10, 10, 100, 100)).save(cropped)
    for endpoint, (first, *names) in endpoints.items():
        required = {first: values[first]}
        plain = client.predict(**required, api_name=endpoint)[1]  # 5 products, nearest first
        assert len(plain) == 5
        for name in names:
            if name == "top_k":
                assert client.predict(**required, top_k=3, api_name=endpoint)[1] == plain[:3]
            elif name in filters:
                column = {"master_category": "masterCategory", "article_type": "articleType"}[name]
                other = next(
                    value for value in sorted({row[column] for row in bundle.metadata}) if value != plain[0][column]
                )
                listing = client.predict(**required, **{name: [other]}, api_name=endpoint)[1]
                assert len(listing) == 5 and {row[column] for row in listing} == {other}, (name, other)
            elif name == "near_duplicate_distance":
                # Just over the closest two of the defaults' answer: one of them must go.
                gap = min(distance(vector, a, b) for a, b in pairs(plain)) + 1e-3
                assert gap <= 0.5, gap
                listing = client.predict(**required, near_duplicate_distance=gap, api_name=endpoint)[1]
                assert len(listing) == 5 and listing[0] == plain[0] and listing != plain
                assert min(distance(vector, a, b) for a, b in pairs(listing)) >= gap - 1e-5  # float32 rounding
            elif name == "region":
                listing = client.predict(**required, region=values["region"], api_name=endpoint)[1]
                assert listing == client.predict(handle_file(str(cropped)), api_name=endpoint)[1] != plain
            else:
                raise AssertionError(f"no check for {name}")


def pairs(listing: list[dict]) -> list[tuple[str, str]]:
    return [(a["filename"], b["filename"]) for i, a in enumerate(listing) for b in listing[i + 1 :]]


def distance(vector: dict, a: str, b: str) -> float:
    return float(np.linalg.norm(vector[a].astype(np.float64) - vector[b]))
