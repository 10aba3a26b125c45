"""Figure 7: precompute with the Ray engine vs the local engine on this machine, Ray's start-up, and the rate of one
actor, from which a cluster's rate is PROJECTED.

Every Ray here is started on this machine on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, node IP
127.0.0.1: what `precompute.py --engine ray` does without --ray-address), with token authentication; the listening
sockets of its processes are checked to be loopback while it runs, or the figure stops.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks import data
from benchmarks.report import Row, ratio, value
from benchmarks.timing import Samples

ROOT = Path(__file__).resolve().parent.parent
BATCH_SIZE = 32
CLUSTER_CPUS = 160  # the projected cluster: 10 nodes of 16 CPUs
MILLION = 1_000_000
_SUMMARY = re.compile(r"\((?P<rate>[\d.]+) images/s\).* in (?P<seconds>[\d.]+) s")
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(16),
    "RAY_USAGE_STATS_ENABLED": "0",
}


class _Timed:
    """An engine that notes when each chunk comes back, for the steady rate after the pool's start-up."""

    def __init__(self, engine):
        self.engine, self.arrivals = engine, []
        self.on_ray = hasattr(engine, "ray")

    def describe(self) -> dict:
        return self.engine.describe()

    def embed_chunks(self, chunks):
        for result in self.engine.embed_chunks(chunks):
            self.arrivals.append((time.perf_counter(), len(result.chunk.names)))
            if self.on_ray and len(self.arrivals) == 1:  # Ray is up: this process's Ray is a tree of its children
                assert_loopback(_listeners(psutil.Process()))
            yield result

    def steady_rate(self) -> float:
        """Images per second from the first chunk back to the last (actors started, models loaded and warm).

        High by up to one chunk's share if Ray hands the first chunks back together (a run of 2 chunks did: both at
        once); hence at least 8 chunks, and the seconds between arrivals in the log.
        """
        (first, _), (last, _) = self.arrivals[0], self.arrivals[-1]
        return sum(count for _, count in self.arrivals[1:]) / (last - first)


def run(ctx, runs: int, images: int) -> list[Row]:
    os.environ.update(RAY_ENV)  # before Ray is imported in this process; the commands inherit it
    os.environ.pop("RAY_ADDRESS", None)
    from fashion_search.pipeline import LocalEngine, build_bundle
    from fashion_search.ray_engine import RayEngine

    log = ctx.log
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    local_whole, ray_whole = Samples("img/s"), Samples("img/s")
    local_steady, pool_steady = Samples("img/s"), Samples("img/s")
    actor1, actor2, startup = Samples("img/s"), Samples("img/s"), Samples("s")
    try:
        log(f"figure 7: generating {images} catalogue JPEGs (60x80, every 20th 1080x1440) ...")
        data.make_catalogue(work / "images", images)

        def in_process(engine, name: str) -> _Timed:
            timed = _Timed(engine)
            build_bundle(work / "images", work / name, timed, batch_size=BATCH_SIZE, quiet=True)
            shutil.rmtree(work / name)
            gaps = [round(b[0] - a[0], 2) for a, b in zip(timed.arrivals, timed.arrivals[1:])]
            log(f"    {name}: seconds between chunks back {gaps}")
            return timed

        for r in range(runs):
            log(f"  round {r + 1}/{runs}: precompute.py --engine local, then --engine ray, on {images} files ...")
            local_whole.values.append(images / _precompute(work / "images", work / "local", ctx.weights, "local"))
            ray_whole.values.append(images / _precompute(work / "images", work / "ray", ctx.weights, "ray"))

            log(f"  round {r + 1}/{runs}: in-process, local engine (model warm), then Ray pools ...")
            local_steady.values.append(in_process(LocalEngine(ctx.embedder), "steady-local").steady_rate())
            engine = RayEngine(ctx.weights, quiet=True)  # fills the CPUs: 2 actors of 1 CPU here
            pool_steady.values.append(in_process(engine, "steady-pool").steady_rate())
            startup.values.append(engine.started_seconds)
            actor1.values.append(in_process(RayEngine(ctx.weights, actors=1, quiet=True), "one-1").steady_rate())
            two_cpus = RayEngine(ctx.weights, actors=1, actor_cpus=2, quiet=True)
            actor2.values.append(in_process(two_cpus, "one-2").steady_rate())
        log(
            f"  whole local {local_whole.values}, whole ray {ray_whole.values}, steady local {local_steady.values}, "
            f"steady pool {pool_steady.values}, one actor of 1 CPU {actor1.values}, of 2 CPUs {actor2.values}, "
            f"Ray start {startup.values}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    projected = actor1.median * CLUSTER_CPUS
    local_text = f"local engine {local_whole.median:.3g} img/s"
    steady_text = f"local engine {local_steady.median:.3g} img/s"
    return [
        Row(
            f"7: precompute.py --engine local, whole command, {images} files",
            "—",
            value(local_whole),
            "",
            "reference",
        ),
        Row(
            f"7: precompute.py --engine ray, whole command with its own local Ray (2 actors of 1 CPU), {images} files",
            local_text,
            value(ray_whole),
            ratio(ray_whole.median / local_whole.median),
            "(information: overhead on 2 cores)",
        ),
        Row(
            "7: Ray start-up in the driver (ray.init of a new local Ray, loopback only)",
            "—",
            value(startup),
            "",
            "(information)",
        ),
        Row(
            "7: steady rate, in-process, from the first chunk back to the last: Ray pool of 2 actors of 1 CPU",
            steady_text,
            value(pool_steady),
            ratio(pool_steady.median / local_steady.median),
            "(information)",
        ),
        Row(
            "7: steady rate of one actor of 1 CPU (one TensorFlow thread)",
            steady_text,
            value(actor1),
            ratio(actor1.median / local_steady.median),
            "(information: the unit of the projection)",
        ),
        Row(
            "7: steady rate of one actor of 2 CPUs",
            steady_text,
            value(actor2),
            ratio(actor2.median / local_steady.median),
            "(information)",
        ),
        Row(
            f"7: a cluster of {CLUSTER_CPUS} CPUs like these (actors of 1 CPU), PROJECTED as {CLUSTER_CPUS} × one "
            f"actor's rate (not measured); 1M images in {MILLION / projected / 60:.0f} min",
            steady_text,
            f"{projected:.3g} img/s",
            ratio(projected / local_steady.median),
            "(projection)",
        ),
    ]


def _precompute(images: Path, out: Path, weights: Path, engine: str) -> float:
    """Run the command; return its wall seconds. Its Ray's sockets are looked at every half second while it runs."""
    cmd = [sys.executable, str(ROOT / "precompute.py"), str(images), "--out", str(out), "--weights", str(weights)]
    cmd += ["--engine", engine, "--quiet"]
    start = time.perf_counter()
    process = psutil.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = set()
    while process.poll() is None and time.perf_counter() - start < 3600:
        seen |= _listeners(process)
        time.sleep(0.5)
    stdout, stderr = process.communicate(timeout=60)
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if process.returncode != 0 or not _SUMMARY.search(stdout):
        raise RuntimeError(f"precompute.py --engine {engine} failed ({process.returncode}):\n{stderr[-2000:]}")
    if engine == "ray":
        assert_loopback(seen)
    return wall


def _listeners(root: psutil.Process) -> set[tuple[str, int]]:
    """(ip, port) of every listening TCP and bound UDP socket of `root` and its descendants."""
    found = set()
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and conn.laddr):
                    found.add((conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def assert_loopback(listeners: set[tuple[str, int]]) -> None:
    """Ray was seen listening (gcs, raylet, workers: several sockets), on loopback addresses only."""
    if len(listeners) < 3:
        raise RuntimeError(f"Ray's listening sockets were not seen: {sorted(listeners)}")
    elsewhere = []
    for ip, port in listeners:
        address = ipaddress.ip_address(ip.split("%")[0])
        if not (getattr(address, "ipv4_mapped", None) or address).is_loopback:
            elsewhere.append((ip, port))
    if elsewhere:
        raise RuntimeError(f"Ray listened beyond loopback: {sorted(elsewhere)}")
