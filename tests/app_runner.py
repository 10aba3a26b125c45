"""Running the app for tests: app.py imported and launched in this process (once per session), or `python app.py`
in a subprocess with the environment a Space would give it."""

from __future__ import annotations

import atexit
import functools
import http.server
import importlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_ONLY = Path(__file__).resolve().parent / "loopback_only"  # its sitecustomize.py: see demo_app
START_TIMEOUT = 300  # seconds for `python app.py` to answer: TensorFlow and the model load on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def launch_app(bundle_dir: Path, weights_file: Path):
    """(the imported app module, its URL) for a catalogue and weights given as FASHION_CATALOG / FASHION_WEIGHTS.

    One app per session: app.py loads the model and builds its demo when imported, so every caller must ask for the
    same catalogue and weights (another combination needs `python app.py` in a subprocess: AppProcess).
    """
    if launch_app.cache_info().currsize:
        raise RuntimeError(
            f"app.py is already imported in this session with another catalogue or weights than {bundle_dir}, "
            f"{weights_file}; use AppProcess for a second app."
        )
    env = {"FASHION_CATALOG": str(bundle_dir), "FASHION_WEIGHTS": str(weights_file)}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        app = importlib.import_module("app")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    _, url, _ = app.demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **app.launch_options()
    )
    atexit.register(app.demo.close)
    return app, url


def app_env(tmp_path: Path, **extra: str) -> dict:
    """This environment without any app, Gradio-server or Hub location settings, caches under `tmp_path`, plus `extra`.

    The telemetry and Xet switches conftest.py sets are kept."""
    unset = (
        "FASHION_",
        "GRADIO_SERVER_",
        "GRADIO_SSR",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        FASHION_CACHE=str(tmp_path / "cache"),
        KERAS_HOME=str(tmp_path / "keras"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class AppProcess:
    """`python app.py ARGS` with `env`, its output in `log`; a context manager that stops it."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self._handle = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "app.py", *args], cwd=ROOT, env=env, stdout=self._handle, stderr=subprocess.STDOUT
        )

    def __enter__(self) -> AppProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, port: int) -> str:
        """Poll until the app answers on `port` and has printed its start lines (Gradio serves before app.py prints
        them); its URL. Fails with the app's output if it exits or never gets there."""
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"app.py exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                answers = httpx.get(url + "config", timeout=5).status_code == 200
                if answers and "* Running on local URL:" in self.log.read_text(errors="replace"):
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"app.py did not answer on {url} in {START_TIMEOUT} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._handle.close()


def build_random_weights_bundle(root: Path, count: int = 6) -> Path:
    """A small catalogue with metadata, embedded with `--weights random` into root/"bundle"."""
    from conftest import make_catalogue, write_styles

    from fashion_search.embedder import Embedder
    from fashion_search.pipeline import build_bundle

    names = make_catalogue(root / "catalogue" / "images", count, seed=3)
    styles = write_styles(root / "catalogue" / "styles.csv", [Path(n).stem for n in names])
    build_bundle(root / "catalogue" / "images", root / "bundle", Embedder.load("random"), metadata=styles, quiet=True)
    return root / "bundle"


class RecordingServer:
    """An HTTP server on 127.0.0.1 that serves `files` ({path: bytes}) and records every request it receives (its
    request line, e.g. "GET /photo.jpg HTTP/1.1" or, as a proxy, "CONNECT dns.google:443 HTTP/1.1"). As the app's
    HTTP(S)_PROXY it sees any request the app makes beyond 127.0.0.1, and refuses it."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files = dict(files or {})
        self.requests: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                recorder.requests.append(self.requestline)
                body = recorder.files.get(self.path)
                self.send_response(200 if body is not None else 403)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            do_CONNECT = do_HEAD = do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class DemoApp:
    url: str
    log: Path  # the app's output, start-up included
    outside: RecordingServer  # the app's proxy: whatever it fetches beyond 127.0.0.1 is asked of it (and refused)
    cache: Path  # its FASHION_CACHE, where it built the demo catalogue's bundle (demo-<key>/)


@functools.cache
def demo_app() -> DemoApp:
    """`python app.py --weights random` on the embedded demo catalogue, as a newcomer starts it (once per session).

    It reaches no address beyond loopback, and a test sees what it tried, in `outside.requests`: its HTTP(S)_PROXY is
    a RecordingServer on 127.0.0.1 (NO_PROXY keeps its own 127.0.0.1 calls direct), and any connection it opens
    directly to another address is refused before a packet leaves and reported there as "GET /connect/HOST/PORT"
    (tests/loopback_only/sitecustomize.py)."""
    folder = Path(tempfile.mkdtemp(prefix="demo-app-"))
    outside = RecordingServer()
    port = free_port()
    proxy = {name: outside.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    no_proxy = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    python_path = os.pathsep.join(filter(None, [str(LOOPBACK_ONLY), os.environ.get("PYTHONPATH")]))
    loopback_only = {"PYTHONPATH": python_path, "LOOPBACK_ONLY_RECORDER": outside.url}
    env = app_env(folder, **proxy, **no_proxy, **loopback_only)
    app = AppProcess(["--weights", "random", "--host", "127.0.0.1", "--port", str(port)], env, folder / "app.log")
    atexit.register(outside.close)
    atexit.register(app.stop)
    url = app.wait_ready(port)
    return DemoApp(url, app.log, outside, Path(env["FASHION_CACHE"]))


def printed_endpoints(client, capsys) -> dict[str, list[str]]:
    """{endpoint: its parameter names} as `client.view_api()` prints them for a person to copy (pytest's capsys)."""
    capsys.readouterr()
    client.view_api()
    text = capsys.readouterr().out
    found = re.findall(r"predict\(([^)]*?),?\s*api_name=\"(/\w+)\"\)", text)
    return {endpoint: [name.strip() for name in names.split(",") if name.strip()] for names, endpoint in found}
