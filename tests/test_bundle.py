"""The bundle format: a round trip, and every kind of damage refused with its named error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fashion_search.bundle import (
    BundleCountMismatch,
    BundleFormatError,
    BundleHashMismatch,
    BundleMismatch,
    BundleMissingFile,
    BundleShapeError,
    BundleUnsafePath,
    BundleValueError,
    BundleVersionError,
    load_bundle,
    write_bundle,
)
from fashion_search.files import sha256_file
from fashion_search.imaging import PREPROCESSING_ID

MODEL = {"architecture": "test", "weights": "random:0"}


@pytest.fixture
def small_bundle(tmp_path):
    """A 6-row bundle of random unit vectors with tiny PNG images and metadata."""
    from PIL import Image

    root = tmp_path / "bundle"
    names = [f"{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(root / "images" / name)
    x = np.random.default_rng(0).normal(size=(6, 2048)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_bundle(
        root,
        embeddings=x,
        filenames=names,
        model=MODEL,
        preprocessing=PREPROCESSING_ID,
        metadata=[{"id": str(i), "articleType": "Tshirts"} for i in range(6)],
    )
    return root, x, names


def rehash(root):
    """Make the manifest agree with the files again, so a test reaches the check behind the hash check."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"] = {name: sha256_file(root / name) for name in manifest["files"] if (root / name).exists()}
    (root / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(root, **changes):
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(changes)
    (root / "manifest.json").write_text(json.dumps(manifest))


def save_npy(root, array):
    np.save(root / "embeddings.npy", array, allow_pickle=True)
    rehash(root)


def test_round_trip(small_bundle):
    root, x, names = small_bundle
    bundle = load_bundle(root)
    np.testing.assert_array_equal(bundle.embeddings, x)
    assert bundle.embeddings.dtype == np.float32
    assert bundle.filenames == names
    assert bundle.metadata[2] == {"id": "2", "articleType": "Tshirts"}
    assert bundle.image_path(3) == root / "images" / "3.png"
    manifest = bundle.manifest
    assert manifest["format_version"] == 1 and manifest["count"] == 6 and manifest["dim"] == 2048
    assert manifest["model"] == MODEL and manifest["preprocessing"] == PREPROCESSING_ID
    assert set(manifest["files"]) == {
        "embeddings.npy",
        "filenames.json",
        "sources.json",
        "metadata.jsonl",
        *(f"images/{n}" for n in names),
    }
    assert np.load(root / "embeddings.npy", allow_pickle=False).shape == (6, 2048)


ODD_METADATA = r"""{"id": "0", "gender": "Men", "year": 2012, "price": 9.5, "usage": null, "sale": true}
{}
{"year": "2012", "id": "2"}
{"price": 1, "sale": 1.0, "usage": false, "id": 3, "zero": -0.0}
{"name": "Caf\u00e9 \u00b7 \u6771\u4eac", "emoji": "\ud83d\udc57", "lone": "\udc00", "empty": "", "zero": 0.0}
{"nested": [1, {"b": [null, 2.5], "a": "x"}], "big": 1000000000000000000000000000000, "tiny": 5e-324}
"""


def typed(row: dict) -> list:
    """A row's items with each value's type, in key order: == alone would take 1 for 1.0 and True, 0.0 for -0.0."""
    return [(key, type(value), repr(value)) for key, value in row.items()]


def test_metadata_rows_load_exactly_as_json_loads_reads_them(small_bundle):
    root, _, _ = small_bundle
    (root / "metadata.jsonl").write_text(ODD_METADATA, encoding="utf-8")
    rehash(root)
    expected = [json.loads(line) for line in ODD_METADATA.splitlines()]
    bundle = load_bundle(root)
    assert len(bundle.metadata) == 6 and bundle.metadata == expected
    assert [typed(row) for row in bundle.metadata] == [typed(row) for row in expected]
    assert [typed(bundle.metadata[row]) for row in range(6)] == [typed(row) for row in expected]


def test_a_loaded_bundle_writes_the_same_files_as_the_lists_it_was_read_from(small_bundle, tmp_path):
    root, x, names = small_bundle
    odd = ODD_METADATA.replace(r', "lone": "\udc00"', "")  # write_bundle writes UTF-8: no lone surrogates
    (root / "metadata.jsonl").write_text(odd, encoding="utf-8")
    rehash(root)
    bundle = load_bundle(root)
    sources = json.loads((root / "sources.json").read_text())
    assert bundle.sources == sources and list(bundle.sources) == [sha256_file(root / "images" / n) for n in names]
    for folder, rows, digests in [
        ("lists", [json.loads(line) for line in odd.splitlines()], sources),
        ("loaded", bundle.metadata, bundle.sources),
    ]:
        shutil.copytree(root / "images", tmp_path / folder / "images")
        write_bundle(
            tmp_path / folder,
            embeddings=x,
            filenames=names,
            model=MODEL,
            preprocessing=PREPROCESSING_ID,
            sources=digests,
            metadata=rows,
        )
    for name in ("metadata.jsonl", "sources.json"):
        assert (tmp_path / "loaded" / name).read_bytes() == (tmp_path / "lists" / name).read_bytes()
    assert load_bundle(tmp_path / "loaded").metadata == [json.loads(line) for line in odd.splitlines()]


@pytest.mark.parametrize(
    "line, message",
    [("{not json", "metadata.jsonl line 3 is not JSON"), ('["a list"]', "metadata.jsonl line 3 is not a JSON object")],
)
def test_a_metadata_line_that_is_not_a_json_object_is_refused(small_bundle, line, message):
    root, _, _ = small_bundle
    lines = (root / "metadata.jsonl").read_text().splitlines()
    lines[2] = line
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    rehash(root)
    with pytest.raises(BundleFormatError, match=message):
        load_bundle(root)


def test_compatibility_check(small_bundle):
    bundle = load_bundle(small_bundle[0])
    bundle.check_compatible(MODEL, PREPROCESSING_ID)
    with pytest.raises(BundleMismatch, match="made with weights 'random:0'.*runs 'sha256:abc'"):
        bundle.check_compatible({**MODEL, "weights": "sha256:abc"}, PREPROCESSING_ID)
    with pytest.raises(BundleMismatch, match="preprocessing"):
        bundle.check_compatible(MODEL, "other")


def test_object_array_is_refused(small_bundle):
    root, _, names = small_bundle
    save_npy(root, np.array([None] * 6, dtype=object))
    with pytest.raises(BundleFormatError, match="not a plain numeric array"):
        load_bundle(root)


def test_wrong_dimension_is_refused(small_bundle):
    root, x, _ = small_bundle
    y = x[:, :512] / np.linalg.norm(x[:, :512], axis=1, keepdims=True)
    save_npy(root, y)
    with pytest.raises(BundleShapeError, match=r"shape \(6, 512\), expected \(N, 2048\)"):
        load_bundle(root)


def test_float64_is_refused(small_bundle):
    root, x, _ = small_bundle
    save_npy(root, x.astype(np.float64))
    with pytest.raises(BundleFormatError, match="float64, expected float32"):
        load_bundle(root)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_rows_are_refused(small_bundle, bad):
    root, x, _ = small_bundle
    x = x.copy()
    x[4, 7] = bad
    save_npy(root, x)
    with pytest.raises(BundleValueError, match=r"non-finite values \(NaN or inf\) in rows \[4\]"):
        load_bundle(root)


def test_non_unit_rows_are_refused(small_bundle):
    root, x, _ = small_bundle
    save_npy(root, x * 2)
    with pytest.raises(BundleValueError, match="6 rows that are not unit vectors"):
        load_bundle(root)


def test_row_count_differing_from_filenames_is_refused(small_bundle):
    root, _, names = small_bundle
    (root / "filenames.json").write_text(json.dumps(names[:5]))
    rehash(root)
    with pytest.raises(BundleCountMismatch, match="row count"):
        load_bundle(root)


def test_row_count_differing_from_metadata_is_refused(small_bundle):
    root, _, _ = small_bundle
    lines = (root / "metadata.jsonl").read_text().splitlines()
    (root / "metadata.jsonl").write_text("\n".join(lines[:4]) + "\n")
    rehash(root)
    with pytest.raises(BundleCountMismatch, match="metadata.jsonl': 4"):
        load_bundle(root)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "images/../../x.png"])
def test_filenames_leaving_images_are_refused(small_bundle, name):
    root, _, names = small_bundle
    (root / "filenames.json").write_text(json.dumps([name] + names[1:]))
    rehash(root)
    with pytest.raises(BundleUnsafePath, match="relative and stay inside images/"):
        load_bundle(root)


def test_symlink_leading_out_of_images_is_refused(small_bundle, tmp_path):
    root, _, names = small_bundle
    secret = tmp_path / "secret.png"
    shutil.copy(root / "images" / names[0], secret)
    (root / "images" / names[0]).unlink()
    (root / "images" / names[0]).symlink_to(secret)
    with pytest.raises(BundleUnsafePath, match="leads outside the bundle's images/ folder"):
        load_bundle(root)


def test_manifest_listing_a_foreign_file_is_refused(small_bundle):
    root, _, _ = small_bundle
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleUnsafePath, match="not a bundle file"):
        load_bundle(root)


def test_hash_mismatch_is_refused(small_bundle):
    root, _, names = small_bundle
    with open(root / "images" / names[2], "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(BundleHashMismatch, match=f"images/{names[2]} does not match the manifest"):
        load_bundle(root)


@pytest.mark.parametrize("name", ["embeddings.npy", "metadata.jsonl", "images/1.png", "manifest.json"])
def test_missing_file_is_refused(small_bundle, name):
    root, _, _ = small_bundle
    (root / name).unlink()
    with pytest.raises(BundleMissingFile, match="missing"):
        load_bundle(root)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(BundleMissingFile, match="does not exist"):
        load_bundle(tmp_path / "nothing")


def test_unknown_format_version_is_refused(small_bundle):
    root, _, _ = small_bundle
    edit_manifest(root, format_version=99)
    with pytest.raises(BundleVersionError, match="format version 99; this version of the app reads version 1"):
        load_bundle(root)


def test_manifest_that_is_not_json_is_refused(small_bundle):
    root, _, _ = small_bundle
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        load_bundle(root)
