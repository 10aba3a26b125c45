"""Turn a folder of catalogue images into a search bundle.

Usage:
    python precompute.py IMAGES_DIR --out BUNDLE_DIR [--weights imagenet|random|PATH] [--metadata styles.csv]
                         [--batch-size N] [--quiet]
    python precompute.py fashion-product-images-small/images --out bundles/kaggle \\
                         --metadata fashion-product-images-small/styles.csv
"""

from __future__ import annotations

import argparse
import logging
import sys

from fashion_search.catalogue import CatalogueError
from fashion_search.pipeline import PrecomputeError, build_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images_dir", help="folder of catalogue images (walked recursively)")
    parser.add_argument("--out", required=True, help="bundle folder to create or update")
    parser.add_argument("--weights", default="imagenet", help="imagenet (default), random, or a Keras .h5 weights file")
    parser.add_argument("--metadata", help="Kaggle styles.csv: product metadata matched by file stem = id")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")

    from fashion_search.embedder import Embedder, WeightsUnavailable  # TensorFlow loads only past --help

    try:
        embedder = Embedder.load(args.weights)
        summary = build_bundle(
            args.images_dir, args.out, embedder,
            metadata=args.metadata, batch_size=args.batch_size, quiet=args.quiet,
        )  # fmt: skip
    except (WeightsUnavailable, PrecomputeError, CatalogueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: run the same command again to resume.", file=sys.stderr)
        return 130
    for name, reason in summary.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
