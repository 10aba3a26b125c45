"""Starting app.py (or the no-op app) in a subprocess on 127.0.0.1 and talking to it with gradio_client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A Gradio app in a subprocess; `url` once `wait_ready` returns. Use as a context manager."""

    def __init__(self, args: list[str], name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        env = {**os.environ, **QUIET_ENV}
        for key in ("FASHION_CATALOG", "FASHION_WEIGHTS", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
            env.pop(key, None)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, *args, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @classmethod
    def app(cls, catalogue: Path, weights: Path) -> Server:
        return cls(["app.py", "--catalog", str(catalogue), "--weights", str(weights), "--host", "127.0.0.1"], "app")

    @classmethod
    def noop(cls, catalogue: Path) -> Server:
        return cls([str(ROOT / "benchmarks" / "noop_app.py"), "--catalog", str(catalogue)], "noop")

    def wait_ready(self, timeout: float = 600.0, poll: float = 0.05) -> float:
        """Block until the server answers HTTP; return seconds since the process was started."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=2):
                    return time.perf_counter() - self.started
            except OSError:
                time.sleep(poll)
        raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s:\n{self.tail()}")

    def peak_rss_mb(self) -> float:
        """The kernel's high-water mark of the process' resident memory (VmHWM), in MB."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def tail(self, chars: int = 3000) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def client(url: str):
    """A gradio_client that does not download the gallery's files and builds no certificate store per request.

    The clients run on the same 2 cores as the server, so what a client burns is taken from the app. Fetching the
    five result images costs a client about 140 ms of CPU per query here, more than the query itself. And
    gradio_client builds a new TLS context, loading the whole CA bundle (~20 ms), for every HTTP call it makes, even
    to a plain http:// URL: ~90 ms of CPU per query (py-spy: 83 % of the clients' samples). These clients speak plain
    HTTP to 127.0.0.1, where no certificate is ever checked, so `ssl_verify=False` changes nothing but that cost
    (client CPU per query 101 -> 9 ms; the no-op app under 8 clients 7.2 -> 19 q/s).
    """
    from gradio_client import Client

    options = {"verbose": False, "download_files": False, "ssl_verify": False}
    if _has_analytics_flag():
        options["analytics_enabled"] = False
    return Client(url, **options)


def ask(client_, path: Path):
    from gradio_client import handle_file

    return client_.predict(handle_file(str(path)), api_name="/recommend")


def _has_analytics_flag() -> bool:
    import inspect

    from gradio_client import Client

    return "analytics_enabled" in inspect.signature(Client.__init__).parameters
