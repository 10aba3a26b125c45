"""The embedded demo catalogue: assets/catalogue built into a bundle once per model, cached, reused on later starts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

from fashion_search import __version__
from fashion_search.bundle import FORMAT_VERSION, MANIFEST, Bundle, BundleError, load_bundle
from fashion_search.catalogue import list_images
from fashion_search.files import sha256_file
from fashion_search.imaging import PREPROCESSING_ID
from fashion_search.pipeline import build_bundle

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CATALOGUE = "catalogue"  # assets/catalogue/images/*.png + assets/catalogue/styles.csv
EXAMPLES = "examples"  # assets/examples/*.png: query pictures that are not in the catalogue


def demo_key(embedder, assets: Path = ASSETS) -> str:
    """What the demo bundle depends on: the model, the preprocessing, the format, this version and every asset byte."""
    catalogue = assets / CATALOGUE
    files = [f"images/{name}" for name in list_images(catalogue / "images")] + ["styles.csv"]
    recipe = {
        "model": embedder.describe(),
        "preprocessing": PREPROCESSING_ID,
        "format_version": FORMAT_VERSION,
        "project_version": __version__,
        "assets": {name: sha256_file(catalogue / name) for name in files},
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def demo_bundle(embedder, cache_dir: Path, assets: Path = ASSETS, quiet: bool = True) -> Bundle:
    """The demo catalogue's bundle for `embedder`, from `cache_dir`/demo-<key>; built there first if need be.

    A damaged or half-built cached bundle is rebuilt (build_bundle resumes and reuses what is intact).
    """
    out = Path(cache_dir) / f"demo-{demo_key(embedder, assets)[:16]}"
    catalogue = assets / CATALOGUE
    with _exclusive(out.with_name(f".{out.name}.lock")):  # two apps starting at once build it once
        if (out / MANIFEST).exists():
            try:
                return load_bundle(out)
            except BundleError as exc:
                log.warning("Rebuilding the demo catalogue at %s: %s", out, exc)
        log.info("Building the demo catalogue (%s) into %s; later starts reuse it.", catalogue, out)
        summary = build_bundle(catalogue / "images", out, embedder, metadata=catalogue / "styles.csv", quiet=quiet)
        log.info("Demo catalogue: %s", summary.describe())
        return load_bundle(out)


def example_images(assets: Path = ASSETS) -> list[Path]:
    folder = assets / EXAMPLES
    return [folder / name for name in list_images(folder)] if folder.is_dir() else []


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; concurrent first starts there just both build
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
