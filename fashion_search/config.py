"""App settings: command-line flags over environment variables over defaults, and where the catalogue comes from.

FASHION_CATALOG / --catalog   a bundle folder, or a Hub dataset OWNER/NAME[@REVISION]; unset = the demo catalogue
FASHION_WEIGHTS / --weights   imagenet (default), random, or a Keras .h5 weights file
FASHION_PRECISION / --precision   float32 or bfloat16; unset = the precision the catalogue was made in
FASHION_SEARCH / --search     auto (default: the catalogue's approximate index when it has one) or exact
FASHION_REFRESH / --refresh   seconds between looks for a new revision of a bundle folder or a Hub branch (default
                              60; 0: never, the catalogue is served as it was at start)
FASHION_CACHE                 where the demo bundle is built and kept (default ~/.cache/fashion-search)
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are Gradio's own: read by Gradio, overridden only by --host / --port.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fashion_search.embedder import PRECISIONS  # (TensorFlow loads only when a model is built)
from fashion_search.search import SEARCH_MODES

DEFAULT_WEIGHTS = "imagenet"
DEFAULT_REFRESH = 60.0  # seconds between looks for a new revision of a followed catalogue
# OWNER/NAME[@REVISION], with OWNER and NAME as the Hub spells repo ids
_HUB_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_SPEC = re.compile(rf"({_HUB_NAME})/({_HUB_NAME})(?:@([^\s@]+))?")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and the fix."""


@dataclass(frozen=True)
class Settings:
    catalogue: str | None  # as given: a folder or a Hub spec; None = the embedded demo catalogue
    weights: str  # "imagenet", "random" or a path
    cache_dir: Path  # the demo bundle's home
    precision: str | None = None  # "float32" or "bfloat16"; None = as the catalogue was made (the demo: float32)
    server_name: str | None = None  # only from --host; None leaves GRADIO_SERVER_NAME / Gradio's default in charge
    server_port: int | None = None  # only from --port; None leaves GRADIO_SERVER_PORT / Gradio's default in charge
    search: str = "auto"  # "auto": the catalogue's approximate index when it has one; "exact": every row, always
    weights_given: str = ""  # as the user set them: "--weights random", "FASHION_WEIGHTS=random"; "": the default
    refresh: float = 0.0  # seconds between looks for a new revision (fashion_search.live); 0: never. resolve(): 60


def resolve(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `argv` (flags win) and `env` (default: os.environ)."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="app.py", description="Fashion visual search: upload a photo, see the most similar catalogue products."
    )
    parser.add_argument(
        "--catalog",
        help="bundle folder or Hub dataset OWNER/NAME[@REV] (env FASHION_CATALOG); "
        "default: the embedded Fashion-MNIST demo catalogue",
    )
    parser.add_argument(
        "--weights", help="imagenet (default), random, or a Keras .h5 weights file (env FASHION_WEIGHTS)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="the model's arithmetic (env FASHION_PRECISION); "
        "default: the catalogue's. bfloat16 is faster on CPUs with bf16 instructions, results close to float32's",
    )
    parser.add_argument(
        "--search",
        choices=SEARCH_MODES,
        help="auto (default): the catalogue's approximate index when precompute.py --index approximate made one; "
        "exact: compare with every product, always (env FASHION_SEARCH)",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        help=f"seconds between looks for a new revision of a bundle folder or a Hub branch, taken live without a "
        f"restart (env FASHION_REFRESH; default {DEFAULT_REFRESH:g}; 0: never). OWNER/NAME@<commit> never moves",
    )
    parser.add_argument("--host", help="address to listen on (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(list(argv))
    catalogue = args.catalog or env.get("FASHION_CATALOG") or None
    weights = args.weights or env.get("FASHION_WEIGHTS") or DEFAULT_WEIGHTS
    precision = args.precision or env.get("FASHION_PRECISION", "").strip() or None
    if precision not in (None, *PRECISIONS):
        parser.error(f"FASHION_PRECISION={precision!r}: use one of {', '.join(PRECISIONS)}, or leave it unset")
    search = args.search or env.get("FASHION_SEARCH", "").strip() or "auto"
    if search not in SEARCH_MODES:
        parser.error(f"FASHION_SEARCH={search!r}: use one of {', '.join(SEARCH_MODES)}, or leave it unset")
    given = args.refresh if args.refresh is not None else env.get("FASHION_REFRESH", "").strip() or DEFAULT_REFRESH
    try:
        refresh = float(given)
    except ValueError:
        refresh = -1.0
    if not 0 <= refresh < float("inf"):
        parser.error(f"FASHION_REFRESH={given!r}: give a number of seconds (0: never look for a new revision)")
    return Settings(
        catalogue=catalogue.strip() if catalogue else None,
        weights=weights.strip(),
        cache_dir=default_cache_dir(env),
        precision=precision,
        server_name=args.host,
        server_port=args.port,
        search=search,
        weights_given=f"--weights {args.weights}" if args.weights else _as_set(env, "FASHION_WEIGHTS"),
        refresh=refresh,
    )


def _as_set(env: Mapping[str, str], name: str) -> str:
    """NAME=value when the variable is set and not empty, else ""."""
    return f"{name}={env[name]}" if env.get(name) else ""


def default_cache_dir(env: Mapping[str, str]) -> Path:
    if env.get("FASHION_CACHE"):
        return Path(env["FASHION_CACHE"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fashion-search"


def catalogue_folder(catalogue: str) -> Path:
    """The local bundle folder for a FASHION_CATALOG value: the folder itself, or a Hub dataset fetched into the cache.

    Raises:
        ConfigError: neither an existing folder nor a Hub dataset that could be fetched (the message says why).
    """
    path = Path(catalogue).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(f"FASHION_CATALOG={catalogue!r} is a file; it must be a bundle folder made by precompute.py.")
    if not looks_like_hub_spec(catalogue):
        raise ConfigError(
            f"FASHION_CATALOG={catalogue!r}: there is no folder there, and it is not a Hub dataset reference "
            "(OWNER/NAME or OWNER/NAME@REVISION). Build a bundle with precompute.py and pass its folder."
        )
    from fashion_search.hub import HubError, fetch_bundle  # huggingface_hub loads only for a Hub catalogue

    try:
        return Path(fetch_bundle(catalogue))
    except HubError as exc:
        raise ConfigError(
            f"FASHION_CATALOG={catalogue!r} is no local folder, so it was read as a Hub dataset: {exc}"
        ) from exc


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """Split "OWNER/NAME" or "OWNER/NAME@REVISION" into (repo_id, revision or None)."""
    match = _HUB_SPEC.fullmatch(spec.strip()) if isinstance(spec, str) else None
    if match is None or any("--" in part or ".." in part for part in match.groups()[:2]):
        raise ValueError(
            f"Catalogue {spec!r} is not a Hub dataset reference: use OWNER/NAME or OWNER/NAME@REVISION "
            "(REVISION a commit sha or branch), e.g. the FASHION_CATALOG value printed by precompute.py --push-to-hub."
        )
    owner, name, revision = match.groups()
    return f"{owner}/{name}", revision


def looks_like_hub_spec(value: str) -> bool:
    try:
        parse_hub_spec(value)
    except ValueError:
        return False
    return True
