"""Catalogue listing and Kaggle styles.csv reading."""

from __future__ import annotations

import pytest
from conftest import write_styles

from fashion_search.catalogue import CatalogueError, list_images, metadata_for, read_styles


def test_lists_images_recursively_sorted_and_skips_the_rest(tmp_path):
    for name in [
        "b.JPG",
        "a.png",
        "sub/c.webp",
        "sub/deeper/d.gif",
        "e.bmp",
        "f.jpeg",
        "notes.txt",
        ".hidden.jpg",
        ".cache/g.jpg",
        "out/h.jpg",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_images(tmp_path, exclude=[tmp_path / "out"]) == [
        "a.png",
        "b.JPG",
        "e.bmp",
        "f.jpeg",
        "sub/c.webp",
        "sub/deeper/d.gif",
    ]


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(CatalogueError, match="is not a folder of images"):
        list_images(tmp_path / "nope")


def test_styles_rows_by_id_with_commas_rejoined(tmp_path):
    styles = read_styles(write_styles(tmp_path / "styles.csv", ["15970", "39386"]))
    assert styles["15970"]["productDisplayName"] == "Product 15970, Blue Tshirts"
    assert styles["39386"] == {
        "id": "39386",
        "gender": "Women",
        "masterCategory": "Accessories",
        "subCategory": "Sub",
        "articleType": "Watches",
        "baseColour": "Red",
        "season": "Summer",
        "year": "2012",
        "usage": "Casual",
        "productDisplayName": "Product 39386 Watches",
    }


def test_metadata_matches_by_stem(tmp_path):
    styles = read_styles(write_styles(tmp_path / "styles.csv", ["1", "2"]))
    rows = metadata_for(["1.jpg", "sub/2.png", "3.jpg"], styles)
    assert [row.get("id") for row in rows] == ["1", "2", None] and rows[2] == {}


def test_styles_without_id_column_is_refused(tmp_path):
    (tmp_path / "bad.csv").write_text("name,colour\nx,y\n")
    with pytest.raises(CatalogueError, match="no header with an 'id' column"):
        read_styles(tmp_path / "bad.csv")
