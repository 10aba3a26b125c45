"""Build the embedded demo catalogue (assets/) from Zalando's Fashion-MNIST, deterministically.

Usage:
    python scripts/make_demo_assets.py                      # writes ./assets (the committed files)
    python scripts/make_demo_assets.py --out /tmp/assets    # same bytes, elsewhere
    python scripts/make_demo_assets.py --source DIR         # idx .gz files from DIR instead of Debian's

Reads the four idx .gz files (Debian package `dataset-fashion-mnist`) and writes:
    <out>/catalogue/images/<id>.png   500 TRAIN items, 50 per class, ids 10000..10499 (in source order)
    <out>/catalogue/styles.csv        Kaggle fashion-product-images-small columns, one row per image
    <out>/examples/<class>.png      one TEST item per class, as query images (not in the catalogue)
    <out>/LICENSE-fashion-mnist.md  attribution, MIT licence, how these files were made

Every file is a pure function of the source data: items are picked by ranking source indices on a
sha256 of (SEED, split, index), so no RNG stream whose algorithm could change between library versions.
Needs only the standard library, numpy and Pillow.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import logging
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("make_demo_assets")

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "assets"
COMMAND = "python scripts/make_demo_assets.py"

SEED = 0
PER_CLASS = 50
FIRST_ID = 10000
SIZE = 112  # 4x the 28px source; the app's 224px input is then an exact 2x nearest-neighbour resize
STYLES_COLUMNS = [
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


@dataclass(frozen=True)
class FashionClass:
    label: int
    name: str  # Fashion-MNIST's own label description
    slug: str  # file stem of the example query image
    master_category: str  # Kaggle styles.csv vocabulary
    sub_category: str


CLASSES = [
    FashionClass(0, "T-shirt/top", "tshirt_top", "Apparel", "Topwear"),
    FashionClass(1, "Trouser", "trouser", "Apparel", "Bottomwear"),
    FashionClass(2, "Pullover", "pullover", "Apparel", "Topwear"),
    FashionClass(3, "Dress", "dress", "Apparel", "Dress"),
    FashionClass(4, "Coat", "coat", "Apparel", "Topwear"),
    FashionClass(5, "Sandal", "sandal", "Footwear", "Sandal"),
    FashionClass(6, "Shirt", "shirt", "Apparel", "Topwear"),
    FashionClass(7, "Sneaker", "sneaker", "Footwear", "Shoes"),
    FashionClass(8, "Bag", "bag", "Accessories", "Bags"),
    FashionClass(9, "Ankle boot", "ankle_boot", "Footwear", "Shoes"),
]

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

MIT_LICENSE = """\
The MIT License (MIT) Copyright © [2017] Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated \
documentation files (the “Software”), to deal in the Software without restriction, including without limitation \
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to \
permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of \
the Software.

THE SOFTWARE IS PROVIDED “AS IS”, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO \
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE \
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF \
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS \
IN THE SOFTWARE.
"""


class SourceError(RuntimeError):
    """The Fashion-MNIST idx files are missing or malformed."""


@dataclass(frozen=True)
class Split:
    name: str
    images: np.ndarray  # (n, 28, 28) uint8, garment bright on black
    labels: np.ndarray  # (n,) uint8
    sha256: dict[str, str]  # idx file name -> sha256 of its decompressed bytes


def parse_idx(data: bytes) -> np.ndarray:
    """Decode one idx file (unsigned-byte payload only, as Fashion-MNIST uses)."""
    if len(data) < 4:
        raise SourceError("idx data shorter than its 4-byte magic number")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise SourceError(f"not an unsigned-byte idx file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SourceError(f"idx header is cut short: {len(data)} bytes, {ndim} dimensions need {header}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise SourceError(f"idx payload is {len(data)} bytes, its header {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_split(source: Path, split: str) -> Split:
    arrays, digests = [], {}
    for name in SPLIT_FILES[split]:
        path = source / name
        if not path.is_file():
            raise SourceError(
                f"{path} not found: install Debian's dataset-fashion-mnist (apt-get install "
                "dataset-fashion-mnist) or pass --source DIR holding the four idx .gz files"
            )
        data = gzip.decompress(path.read_bytes())
        digests[name.removesuffix(".gz")] = hashlib.sha256(data).hexdigest()
        arrays.append(parse_idx(data))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise SourceError(f"{split}: unexpected shapes images {images.shape}, labels {labels.shape}")
    return Split(split, images, labels, digests)


def _rank_key(split: str, index: int) -> bytes:
    return hashlib.sha256(f"{SEED}:{split}:{index}".encode()).digest()


def ranked_indices(split: Split, label: int) -> list[int]:
    """Indices of one class in a fixed pseudo-random order that depends on nothing but SEED."""
    indices = np.flatnonzero(split.labels == label).tolist()
    return sorted(indices, key=lambda i: _rank_key(split.name, i))


def pick_catalogue(train: Split) -> list[int]:
    """PER_CLASS train indices per class, no two with identical pixels; returned in source order."""
    picked: list[int] = []
    for cls in CLASSES:
        seen: set[bytes] = set()
        chosen = []
        for index in ranked_indices(train, cls.label):
            pixels = train.images[index].tobytes()
            if pixels in seen:  # exact duplicates would only tie at distance 0 in the search
                continue
            seen.add(pixels)
            chosen.append(index)
            if len(chosen) == PER_CLASS:
                break
        picked.extend(chosen)
    return sorted(picked)


def pick_examples(test: Split, train: Split) -> dict[FashionClass, int]:
    """One test index per class whose pixels occur nowhere in the train split."""
    train_pixels = {img.tobytes() for img in train.images}
    examples = {}
    for cls in CLASSES:
        examples[cls] = next(i for i in ranked_indices(test, cls.label) if test.images[i].tobytes() not in train_pixels)
    return examples


def render_png(pixels: np.ndarray) -> bytes:
    """28x28 bright-on-black -> SIZE x SIZE RGB PNG, garment dark on a white background."""
    inverted = Image.fromarray(255 - pixels)
    upscaled = np.asarray(inverted.resize((SIZE, SIZE), Image.Resampling.BICUBIC), dtype=np.uint16)
    # 128 grey levels (255 kept as pure white): invisible after a 4x bicubic upscale, ~25% smaller files.
    levels = np.minimum((upscaled + 1) // 2 * 2, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(levels).convert("RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def styles_rows(train: Split, indices: list[int]) -> list[dict[str, str]]:
    rows = []
    for offset, index in enumerate(indices):
        cls = CLASSES[int(train.labels[index])]
        rows.append(
            {
                "id": str(FIRST_ID + offset),
                "gender": "",  # Fashion-MNIST records none of these; left empty rather than guessed
                "masterCategory": cls.master_category,
                "subCategory": cls.sub_category,
                "articleType": cls.name,
                "baseColour": "",
                "season": "",
                "year": "",
                "usage": "",
                "productDisplayName": f"Fashion-MNIST {cls.name} (train #{index})",
            }
        )
    return rows


def styles_csv(rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STYLES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def license_note(train: Split, test: Split, examples: dict[FashionClass, int]) -> bytes:
    digests = {**train.sha256, **test.sha256}
    lines = [
        "# Fashion-MNIST demo catalogue",
        "",
        "The images under `catalogue/` and `examples/` are derived from **Fashion-MNIST** by Zalando Research",
        "(<https://github.com/zalandoresearch/fashion-mnist>), Copyright © 2017 Zalando SE, used under the MIT",
        "licence reproduced below. Paper: Han Xiao, Kashif Rasul, Roland Vollgraf, *Fashion-MNIST: a Novel Image",
        "Dataset for Benchmarking Machine Learning Algorithms*, arXiv:1708.07747 (2017).",
        "",
        "## How these files were made",
        "",
        "Generated, deterministically, from Debian's `dataset-fashion-mnist` package",
        f"(`{DEFAULT_SOURCE}`) by running, from the repository root:",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"- `catalogue/images/<id>.png`: {PER_CLASS * len(CLASSES)} items of the TRAIN split, {PER_CLASS} per class,",
        f"  ids {FIRST_ID}..{FIRST_ID + PER_CLASS * len(CLASSES) - 1} in source order. Each 28x28 grey image is",
        f"  inverted (garment dark on white), upscaled bicubically to {SIZE}x{SIZE}, kept to 128 grey levels and",
        "  saved as RGB PNG.",
        "- `catalogue/styles.csv`: the column layout of Kaggle's fashion-product-images-small `styles.csv`.",
        "  `articleType` is the Fashion-MNIST class; `masterCategory`/`subCategory` follow from it;",
        "  `productDisplayName` names the class and the item's index in the train split. Fashion-MNIST has no",
        "  gender, colour, season, year or usage, so those columns are empty.",
        "- `examples/<class>.png`: one TEST-split item per class, rendered the same way, so they are not in the",
        "  catalogue (none of them is pixel-identical to any train image):",
        "",
    ]
    lines += [f"  - `{cls.slug}.png`: {cls.name}, test #{index}" for cls, index in examples.items()]
    lines += ["", "Source files (sha256 of the decompressed idx data):", ""]
    lines += [f"- `{name}`: `{digest}`" for name, digest in sorted(digests.items())]
    lines += ["", "## Licence", "", MIT_LICENSE]
    return "\n".join(lines).encode("utf-8")


def _write_dir(directory: Path, files: dict[str, bytes]) -> None:
    """Make `directory` hold exactly these .png files (stale ones from older runs are removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in sorted(set(p.name for p in directory.glob("*.png")) - set(files)):
        log.info("removing stale %s", directory / stale)
        (directory / stale).unlink()
    for name, data in files.items():
        path = directory / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)


def make_demo_assets(source: Path, out: Path) -> dict[str, int]:
    """Write the demo catalogue into `out`; returns counts and total bytes."""
    train, test = load_split(source, "train"), load_split(source, "test")
    indices = pick_catalogue(train)
    rows = styles_rows(train, indices)
    examples = pick_examples(test, train)

    images = {f"{row['id']}.png": render_png(train.images[i]) for row, i in zip(rows, indices)}
    example_images = {f"{cls.slug}.png": render_png(test.images[i]) for cls, i in examples.items()}
    others = {
        out / "catalogue" / "styles.csv": styles_csv(rows),
        out / "LICENSE-fashion-mnist.md": license_note(train, test, examples),
    }
    _write_dir(out / "catalogue" / "images", images)
    _write_dir(out / "examples", example_images)
    for path, data in others.items():
        path.write_bytes(data)
    total = sum(map(len, images.values())) + sum(map(len, example_images.values()))
    total += sum(map(len, others.values()))
    return {"images": len(images), "examples": len(example_images), "bytes": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help=f"directory of the four idx .gz files (default {DEFAULT_SOURCE})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: the repo's assets/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = make_demo_assets(args.source, args.out)
    except SourceError as error:
        log.error("error: %s", error)
        return 1
    log.info(
        "wrote %d catalogue images, %d examples, styles.csv and licence note to %s (%.2f MB)",
        summary["images"],
        summary["examples"],
        args.out,
        summary["bytes"] / 1e6,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
