"""Run app.py as a real server process on a free local port, for the tests that talk to it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from conftest import ROOT

START_TIMEOUT = 300  # TensorFlow import, model build, warm-up: ~30 s on two cores


@dataclass
class AppProcess:
    url: str
    process: subprocess.Popen
    log: Path

    def rss_mb(self) -> float:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def app_env() -> dict[str, str]:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1", TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("FASHION_CATALOG", "FASHION_WEIGHTS", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        env.pop(name, None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(*args: str | os.PathLike, log: Path) -> Iterator[AppProcess]:
    """Start `python app.py ARGS --host 127.0.0.1 --port P`, wait until it answers, stop it afterwards."""
    port = free_port()
    command = [sys.executable, str(ROOT / "app.py"), *map(str, args), "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=app_env(), stdout=sink, stderr=subprocess.STDOUT)
    app = AppProcess(f"http://127.0.0.1:{port}/", process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{app.output()[-3000:]}")
            try:
                with urllib.request.urlopen(app.url + "config", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer within {START_TIMEOUT} s:\n{app.output()[-3000:]}")
            time.sleep(0.5)
        yield app
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
