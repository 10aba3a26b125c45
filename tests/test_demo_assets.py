"""The committed demo catalogue (assets/) is exactly what scripts/make_demo_assets.py makes from Fashion-MNIST."""

from __future__ import annotations

import csv
import importlib.util
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import NEEDS_FASHION_MNIST
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_demo_assets.py"
ASSETS = ROOT / "assets"
IMAGES = ASSETS / "catalogue" / "images"
STYLES = ASSETS / "catalogue" / "styles.csv"
EXAMPLES = ASSETS / "examples"

HEADER = [
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _load_script():
    spec = importlib.util.spec_from_file_location("make_demo_assets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("assets")
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with STYLES.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _same(name: str, committed: Path, fresh: Path) -> bool:
    """Same bytes; for a PNG, the same mode and pixels (its compressed bytes depend on the zlib of Pillow's build)."""
    if committed.read_bytes() == fresh.read_bytes():
        return True
    if not name.endswith(".png"):
        return False
    with Image.open(committed) as a, Image.open(fresh) as b:
        return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@NEEDS_FASHION_MNIST
def test_committed_assets_are_what_a_fresh_run_makes(regenerated):
    committed, fresh = _files(ASSETS), _files(regenerated)
    assert sorted(committed) == sorted(fresh)
    differing = [name for name in committed if not _same(name, ASSETS / name, regenerated / name)]
    assert differing == [], f"re-run `python {SCRIPT.relative_to(ROOT)}` and commit: {differing[:5]}"


def test_total_size_stays_small():
    assert sum(len(data) for data in _files(ASSETS).values()) < 3_000_000


def test_styles_has_500_rows_50_per_class(rows):
    assert len(rows) == 500
    assert Counter(row["articleType"] for row in rows) == {name: 50 for name in CLASS_NAMES}


def test_styles_ids_and_images_match_one_to_one(rows):
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    assert all(i.isdigit() for i in ids)
    assert set(ids) == {p.stem for p in IMAGES.iterdir()}
    assert all(p.suffix == ".png" for p in IMAGES.iterdir())


def test_styles_fields_are_known_facts_only(rows):
    categories = {row["articleType"]: (row["masterCategory"], row["subCategory"]) for row in rows}
    assert categories == {
        "T-shirt/top": ("Apparel", "Topwear"),
        "Trouser": ("Apparel", "Bottomwear"),
        "Pullover": ("Apparel", "Topwear"),
        "Dress": ("Apparel", "Dress"),
        "Coat": ("Apparel", "Topwear"),
        "Sandal": ("Footwear", "Sandal"),
        "Shirt": ("Apparel", "Topwear"),
        "Sneaker": ("Footwear", "Shoes"),
        "Bag": ("Accessories", "Bags"),
        "Ankle boot": ("Footwear", "Shoes"),
    }
    for row in rows:
        assert [row[c] for c in ("gender", "baseColour", "season", "year", "usage")] == ["", "", "", "", ""]


@NEEDS_FASHION_MNIST
def test_display_names_point_at_train_items_of_that_class(rows, script):
    train = script.load_split(script.DEFAULT_SOURCE, "train")
    for row in rows:
        prefix = f"Fashion-MNIST {row['articleType']} (train #"
        assert row["productDisplayName"].startswith(prefix) and row["productDisplayName"].endswith(")")
        index = int(row["productDisplayName"][len(prefix) : -1])
        assert CLASS_NAMES[train.labels[index]] == row["articleType"]


def test_images_are_rgb_garments_on_white():
    for path in [*IMAGES.iterdir(), *EXAMPLES.iterdir()]:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (112, 112)), path.name
        white = (_pixels(path) == 255).all(axis=-1)
        border = np.concatenate([white[0], white[-1], white[:, 0], white[:, -1]])
        assert border.mean() > 0.5, path.name  # a white background (garments may touch an edge)
        assert _pixels(path).min() < 128, path.name  # with something dark drawn on it


def test_examples_are_named_by_class_and_not_in_the_catalogue():
    names = sorted(p.name for p in EXAMPLES.iterdir())
    assert 6 <= len(names) <= 10
    assert set(names) <= {
        "tshirt_top.png",
        "trouser.png",
        "pullover.png",
        "dress.png",
        "coat.png",
        "sandal.png",
        "shirt.png",
        "sneaker.png",
        "bag.png",
        "ankle_boot.png",
    }
    catalogue = {_pixels(p).tobytes() for p in IMAGES.iterdir()}
    assert len(catalogue) == 500  # no two catalogue images are identical either
    for name in names:
        assert _pixels(EXAMPLES / name).tobytes() not in catalogue, name


def test_parse_idx_reads_and_rejects(script):
    data = struct.pack(">HBBII", 0, 0x08, 2, 2, 3) + bytes(range(6))
    assert script.parse_idx(data).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(script.SourceError, match=r"idx payload is 17 bytes, its header \(2, 3\) needs 18"):
        script.parse_idx(data[:-1])
    with pytest.raises(script.SourceError, match="header is cut short"):
        script.parse_idx(data[:9])
    with pytest.raises(script.SourceError, match="not an unsigned-byte idx file"):
        script.parse_idx(struct.pack(">HBBI", 0, 0x0D, 1, 1) + b"\0\0\0\0")
