"""Turn a folder of catalogue images into a search bundle.

Usage:
    python precompute.py IMAGES_DIR --out BUNDLE_DIR [--weights imagenet|random|PATH] [--metadata styles.csv]
                         [--batch-size N] [--precision float32|bfloat16] [--quiet]
                         [--index exact|approximate [--retrain-index] [--tuning-photos DIR]]
                         [--engine local|ray [--ray-address ADDRESS] [--ray-actors N] [--ray-actor-cpus N]]
                         [--push-to-hub OWNER/NAME [--private] [--license ID]]
    python precompute.py --out BUNDLE_DIR --push-to-hub OWNER/NAME     # push an existing bundle, no rebuild
    python precompute.py /shared/images --out /shared/bundles/big --engine ray --ray-address auto  # on a Ray cluster
    python precompute.py fashion-product-images-small/images --out bundles/kaggle \\
                         --metadata fashion-product-images-small/styles.csv
"""

from __future__ import annotations

import argparse
import logging
import sys

from fashion_search.catalogue import CatalogueError
from fashion_search.embedder import PRECISIONS
from fashion_search.pipeline import INDEX_KINDS, PrecomputeError, build_bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "images_dir",
        nargs="?",
        help="folder of catalogue images (walked recursively); leave out to push the existing bundle as it is",
    )
    parser.add_argument("--out", required=True, help="bundle folder to create or update")
    parser.add_argument("--weights", default="imagenet", help="imagenet (default), random, or a Keras .h5 weights file")
    parser.add_argument("--metadata", help="Kaggle styles.csv: product metadata matched by file stem = id")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="the model's arithmetic: float32 (default, the reference design's) or bfloat16 (faster on CPUs with "
        "bf16 instructions; the app then runs in bfloat16 too)",
    )
    parser.add_argument(
        "--index",
        choices=INDEX_KINDS,
        default="exact",
        help="exact (default): the app compares a query with every product; approximate: also build an index that "
        "finds them in milliseconds among a million (see docs/large-catalogues.md). On an existing bundle it embeds "
        "only new images, and carries the index over to them without training",
    )
    parser.add_argument(
        "--retrain-index",
        action="store_true",
        help="with --index approximate: train the index afresh (precompute says when this is due)",
    )
    parser.add_argument(
        "--tuning-photos",
        metavar="DIR",
        help="with --index approximate: photos like those shoppers send (at least 30) to tune the index's search "
        "depth and measure its recall on; default: altered copies of 600 of the catalogue's own pictures",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where images are decoded and embedded: local (default, this process) or ray (a Ray cluster's actors, "
        "with Ray Data; needs pip install -r requirements-ray.txt)",
    )
    parser.add_argument(
        "--ray-address",
        help="with --engine ray: the cluster to join (auto, or the head's HOST:PORT; default RAY_ADDRESS); "
        "unset, a Ray is started on this machine, on 127.0.0.1 only",
    )
    parser.add_argument(
        "--ray-actors", type=int, help="with --engine ray: how many models run at once (default: fill the CPUs)"
    )
    parser.add_argument(
        "--ray-actor-cpus",
        type=int,
        default=1,
        help="with --engine ray: CPUs (TensorFlow threads) per actor (default 1)",
    )
    parser.add_argument(
        "--push-to-hub",
        metavar="OWNER/NAME",
        help="upload the bundle to this Hugging Face dataset repo (token from HF_TOKEN or `hf auth login`)",
    )
    parser.add_argument("--private", action="store_true", help="create the dataset repo private")
    parser.add_argument(
        "--license",
        default="unknown",
        help="the licence of the images, for the dataset card: a Hub "
        "licence id such as mit or cc-by-4.0 (default unknown)",
    )
    args = parser.parse_args(argv)
    if args.images_dir is None and not args.push_to_hub:
        parser.error("give IMAGES_DIR to build a bundle, or --push-to-hub to push an existing one")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")

    if args.images_dir is not None and (status := build(args)) != 0:
        return status
    return push(args) if args.push_to_hub else 0


def build(args: argparse.Namespace) -> int:
    from fashion_search.embedder import Embedder, PrecisionUnavailable, WeightsUnavailable

    try:
        if args.engine == "ray":
            from fashion_search.ray_engine import RayEngine  # Ray loads here; TensorFlow only in the cluster's actors

            embedder = RayEngine(
                args.weights,
                precision=args.precision,
                address=args.ray_address,
                actors=args.ray_actors,
                actor_cpus=args.ray_actor_cpus,
                quiet=args.quiet,
            )
        else:
            embedder = Embedder.load(args.weights, precision=args.precision)  # TensorFlow loads here
        summary = build_bundle(
            args.images_dir,
            args.out,
            embedder,
            metadata=args.metadata,
            batch_size=args.batch_size,
            quiet=args.quiet,
            index=args.index,
            retrain_index=args.retrain_index,
            tuning_photos=args.tuning_photos,
        )
    except (WeightsUnavailable, PrecisionUnavailable, PrecomputeError, CatalogueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted: run the same command again to resume.", file=sys.stderr)
        return 130
    for name, reason in summary.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(summary.describe())
    return 0


def push(args: argparse.Namespace) -> int:
    import httpx2  # huggingface_hub's HTTP client: "the Hub cannot be reached" is its TransportError
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from fashion_search.bundle import BundleError
    from fashion_search.hub import HubError, preload_front_matter, push_bundle

    try:  # push_bundle loads and verifies the bundle first: nothing the app would refuse is published
        result = push_bundle(args.out, args.push_to_hub, private=args.private, license=args.license)
    except (BundleError, HubError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (httpx2.TransportError, OfflineModeIsEnabled) as exc:
        print(
            f"error: cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__}: {exc}). Check the network "
            "and HF_ENDPOINT, then run the same command again: the push resumes where it stopped.",
            file=sys.stderr,
        )
        return 1
    except HfHubHTTPError as exc:
        print(f"error: the Hub refused the upload ({exc}). Check HF_TOKEN or `hf auth login`.", file=sys.stderr)
        return 1
    print(
        f"{'Pushed' if result.created_commit else 'Unchanged, no new commit:'} "
        f"{args.push_to_hub} at {result.commit_sha}"
    )
    print(f"Set this in the Space's variables: FASHION_CATALOG={result.catalogue_value}")
    print("To download it when the Space is built rather than at each start, add to its README's front matter:")
    print(preload_front_matter(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
