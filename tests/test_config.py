"""Configuration: flags over environment over defaults, and `python app.py` run as a Space runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_runner import ROOT, AppProcess, app_env, build_random_weights_bundle, free_port
from conftest import draw_product, reference_top_k
from gradio_client import Client, handle_file
from hub_standin import HubStandIn

from fashion_search import config
from fashion_search.bundle import load_bundle


def test_defaults_without_flags_or_environment():
    assert config.resolve([], {}) == config.Settings(
        catalogue=None,
        weights="imagenet",
        cache_dir=Path.home() / ".cache" / "fashion-search",
        server_name=None,
        server_port=None,
        refresh=60.0,
    )


def test_the_refresh_interval_follows_the_flag_then_the_environment():
    assert config.resolve([], {"FASHION_REFRESH": "0"}).refresh == 0.0
    assert config.resolve([], {"FASHION_REFRESH": " 2.5 "}).refresh == 2.5
    assert config.resolve(["--refresh", "7"], {"FASHION_REFRESH": "0"}).refresh == 7.0


@pytest.mark.parametrize(
    "argv, env, given", [(["--refresh", "-1"], {}, "-1.0"), ([], {"FASHION_REFRESH": "often"}, "'often'")]
)
def test_a_refresh_that_is_not_a_number_of_seconds_is_refused(argv, env, given, capsys):
    with pytest.raises(SystemExit):
        config.resolve(argv, env)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"app.py: error: FASHION_REFRESH={given}: give a number of seconds (0: never look for a new revision)"
    )


def test_environment_and_flags_flags_win():
    env = {"FASHION_CATALOG": "bundles/kaggle", "FASHION_WEIGHTS": "w.h5", "FASHION_CACHE": "/var/cache/fs"}
    from_env = config.resolve([], env)
    assert (from_env.catalogue, from_env.weights, from_env.cache_dir) == (
        "bundles/kaggle",
        "w.h5",
        Path("/var/cache/fs"),
    )
    from_flags = config.resolve(
        ["--catalog", "shop/cat@abc", "--weights", "random", "--host", "0.0.0.0", "--port", "8000"], env
    )
    assert (from_flags.catalogue, from_flags.weights) == ("shop/cat@abc", "random")
    assert (from_flags.server_name, from_flags.server_port) == ("0.0.0.0", 8000)
    assert config.resolve([], {"FASHION_CATALOG": "", "FASHION_WEIGHTS": ""}).weights == "imagenet"
    assert config.resolve([], {"XDG_CACHE_HOME": "/xdg"}).cache_dir == Path("/xdg/fashion-search")


def test_the_search_follows_the_flag_then_the_environment():
    assert config.resolve([], {}).search == "auto"  # the catalogue's approximate index when it has one
    assert config.resolve([], {"FASHION_SEARCH": "exact"}).search == "exact"
    assert config.resolve(["--search", "auto"], {"FASHION_SEARCH": "exact"}).search == "auto"


@pytest.mark.parametrize("argv, env", [(["--search", "fast"], {}), ([], {"FASHION_SEARCH": "faiss"})])
def test_an_unknown_search_is_refused_naming_the_choices(argv, env, capsys):
    with pytest.raises(SystemExit) as exited:
        config.resolve(argv, env)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(
        (
            "invalid choice: 'fast' (choose from 'auto', 'exact')",
            "FASHION_SEARCH='faiss': use one of auto, exact, or leave it unset",
        )
    )


def test_gradio_server_settings_are_left_to_gradio():
    settings = config.resolve([], {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7999"})
    assert (settings.server_name, settings.server_port) == (None, None)  # app.py then passes no address to launch()


@pytest.mark.parametrize(
    ("value", "hub"),
    [
        ("shop/catalogue", True),
        ("shop/catalogue@0123abc", True),
        ("user-1/fashion.v2@main", True),
        ("./bundle", False),
        ("/srv/bundles/kaggle", False),
        ("a/b/c", False),
        ("bundle", False),
        ("~/x", False),
    ],
)
def test_what_counts_as_a_hub_reference(value, hub):
    assert config.looks_like_hub_spec(value) is hub


def test_a_local_catalogue_is_used_as_it_is(bundle_dir, tmp_path):
    assert config.catalogue_folder(str(bundle_dir)) == bundle_dir
    with pytest.raises(config.ConfigError, match="is a file"):
        config.catalogue_folder(str(bundle_dir / "manifest.json"))
    with pytest.raises(config.ConfigError, match="there is no folder there, and it is not a Hub dataset reference"):
        config.catalogue_folder(str(tmp_path / "missing"))


# --- `python app.py` in a subprocess ---------------------------------------------------------------------------------


@pytest.fixture()
def query(tmp_path) -> Path:
    path = tmp_path / "query.jpg"
    draw_product(np.random.default_rng(5), size=(100, 100)).save(path)
    return path


@pytest.mark.slow
def test_app_serves_a_hub_catalogue_with_a_weights_file_on_gradio_server_port(
    bundle_dir, weights_file, embedder, query, tmp_path
):
    hub = HubStandIn(tmp_path / "hub").start()
    try:
        from fashion_search.hub import push_bundle

        pushed = push_bundle(bundle_dir, "shop/catalogue", endpoint=hub.url, token="test-token")
        port = free_port()
        env = app_env(
            tmp_path,
            FASHION_CATALOG=pushed.catalogue_value,
            FASHION_WEIGHTS=str(weights_file),
            GRADIO_SERVER_PORT=str(port),
            HF_ENDPOINT=hub.url,
            HF_TOKEN="test-token",
        )
        with AppProcess([], env, tmp_path / "app.log") as app:
            url = app.wait_ready(port)
            _, listing = Client(url, verbose=False).predict(handle_file(str(query)), api_name="/recommend")
    finally:
        hub.stop()
    filenames, distances = reference_top_k(embedder, load_bundle(bundle_dir), query)
    assert [row["filename"] for row in listing] == filenames
    assert [row["distance"] for row in listing] == pytest.approx(distances, abs=1e-5)


def test_the_weights_are_named_as_they_were_given():
    """What the page's random-weights banner names: the flag, else the variable, as the user wrote them."""
    env = {"FASHION_WEIGHTS": "random"}
    assert config.resolve(["--weights", "random"], env).weights_given == "--weights random"
    assert config.resolve([], env).weights_given == "FASHION_WEIGHTS=random"
    assert config.resolve([], {}).weights_given == ""


@pytest.fixture()
def random_weights_bundle(tmp_path) -> Path:
    return build_random_weights_bundle(tmp_path / "random")


@pytest.mark.slow
def test_flags_win_over_the_environment_and_random_weights_are_flagged_on_the_page(random_weights_bundle, tmp_path):
    port, env_port = free_port(), free_port()
    env = app_env(tmp_path, FASHION_CATALOG=str(tmp_path / "not-this-one"), GRADIO_SERVER_PORT=str(env_port))
    args = ["--catalog", str(random_weights_bundle), "--weights", "random", "--port", str(port)]
    with AppProcess(args, env, tmp_path / "app.log") as app:
        url = app.wait_ready(port)
        page = str(httpx.get(url + "config", timeout=30).json())
    assert "random model weights (--weights random): the results are not meaningful" in page  # as given
    assert f"of the 6 products in the catalogue <b>{random_weights_bundle.name}</b>" in page


@pytest.mark.slow
def test_without_imagenet_weights_the_app_stops_at_once_saying_how_to_pass_a_file(tmp_path):
    refused = "http://127.0.0.1:9"  # nothing listens there: the download fails as it does offline, online or not
    env = app_env(tmp_path, https_proxy=refused, HTTPS_PROXY=refused, http_proxy=refused, HTTP_PROXY=refused)
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: The ImageNet weights for ResNet50 could not be downloaded")
    assert "--weights PATH" in last_line and "FASHION_WEIGHTS=PATH" in last_line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()  # no demo catalogue was built with other weights
