"""The catalogue: which image files a folder holds, and the product metadata of Kaggle's styles.csv."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


class CatalogueError(Exception):
    """A catalogue folder or metadata file that cannot be used; the message names the fix."""


def list_images(images_dir: str | os.PathLike, exclude: list[Path] = ()) -> list[str]:
    """Image files under `images_dir`, recursively, as sorted relative POSIX paths (hidden files and folders skipped).

    Args:
        exclude: folders not to walk into (e.g. the bundle being written, when it lies inside the catalogue).
    """
    return list_files(images_dir, exclude)[0]


def list_files(images_dir: str | os.PathLike, exclude: list[Path] = ()) -> tuple[list[str], list[str]]:
    """(the image files, the other files) under `images_dir`, as list_images lists them; an image by its extension."""
    root = Path(images_dir)
    if not root.is_dir():
        raise CatalogueError(f"{root} is not a folder of images. Pass the folder that holds the catalogue's pictures.")
    excluded = {Path(p).resolve() for p in exclude}
    images, others = [], []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and (here / d).resolve() not in excluded)
        for name in files:
            if not name.startswith("."):
                found = images if Path(name).suffix.lower() in IMAGE_EXTENSIONS else others
                found.append((here / name).relative_to(root).as_posix())
    return sorted(images), sorted(others)


def read_styles(csv_path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Kaggle's styles.csv as {id: row}. Rows with commas inside productDisplayName (the file has some) are rejoined."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or "id" not in header:
                raise CatalogueError(f"{path} has no header with an 'id' column (Kaggle's styles.csv has one).")
            width = len(header)
            styles = {}
            for row in reader:
                if not row:
                    continue
                if len(row) > width:  # unquoted commas in the last column
                    row = row[: width - 1] + [",".join(row[width - 1 :])]
                record = dict(zip(header, (cell.strip() for cell in row)))
                styles[record["id"]] = record
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CatalogueError(f"Could not read the metadata file {path} ({exc}).") from exc
    return styles


def metadata_for(filenames: list[str], styles: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """One metadata row per image, matched by file stem = id (Kaggle's `<id>.jpg`); {} where there is none."""
    rows = [dict(styles.get(PurePosixPath(name).stem, {})) for name in filenames]
    missing = sum(1 for row in rows if not row)
    if missing:
        log.warning("%d of %d images have no row in the metadata file.", missing, len(filenames))
    return rows
