"""app.py imported and launched in the test process on 127.0.0.1 (a free port), once per session, for the API and
browser tests. Its catalogue and weights come through FASHION_CATALOG / FASHION_WEIGHTS, as on a Space."""

from __future__ import annotations

import atexit
import functools
import importlib
import os
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def launch_app(bundle_dir: Path, weights_file: Path):
    """(the imported app module, its URL). One app per session: app.py builds its demo when imported."""
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
