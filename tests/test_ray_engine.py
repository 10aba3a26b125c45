"""The Ray engine: the same bundle as the local engine, through an actor killed mid-run, a driver killed and re-run,
a bad image, a missing Ray, a local Ray started by the command and a cluster started with `ray start --head`.

Every Ray here runs on this machine and on loopback only: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (without it Ray on
Linux turns 127.0.0.1 into the machine's interface address) and node IP 127.0.0.1, checked by listing the listening
sockets of Ray's processes. Ray's token authentication is on, with one token, for the cluster and every driver.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import ROOT, make_catalogue, write_styles
from test_pipeline import bundle_contents, precompute

from fashion_search.bundle import load_bundle
from fashion_search.pipeline import PrecomputeError, build_bundle

pytestmark = pytest.mark.slow  # starts Ray clusters, their actors build the ResNet50

# Before Ray is first imported in this process: read by Ray at import, and inherited by every process started here.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(16),
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(RAY_ENV)
os.environ.pop("RAY_ADDRESS", None)
BATCH = 16
IMAGES = 240  # plus 3 bad files
SMALL = 96  # plus 1 bad file: 7 chunks
OBJECT_STORE_BYTES = 300 * 1024**2
TIMEOUT_S = 600


# Ray processes and their sockets


def listening_addresses(processes: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    """(pid, name, ip, port) of every listening TCP socket and bound UDP socket of `processes`."""
    found = []
    for process in processes:
        try:
            name = process.name()
            for conn in process.net_connections(kind="inet"):
                listening = conn.status == psutil.CONN_LISTEN or (conn.type == socket.SOCK_DGRAM and conn.laddr)
                if listening:
                    found.append((process.pid, name, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def assert_loopback_only(processes: list[psutil.Process], at_least: int = 1) -> list:
    listeners = listening_addresses(processes)
    assert len(listeners) >= at_least, f"expected Ray's listening sockets, found {listeners}"
    elsewhere = [entry for entry in listeners if not is_loopback(entry[2])]
    assert not elsewhere, f"Ray listens beyond loopback: {elsewhere}"
    return listeners


def session_processes(session: int) -> list[psutil.Process]:
    """The processes of the session a `ray start` we launched leads (Ray's processes keep their parent's session)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session:
                found.append(process)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def actor_processes(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Ray names an actor's process after its class: ray::MapWorker(MapBatches(EmbedActor))."""
    found = []
    for process in processes:
        try:
            if "EmbedActor" in " ".join(process.cmdline()) and "MapWorker" in " ".join(process.cmdline()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def wait_for(condition, what: str, timeout: float = TIMEOUT_S, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_session(session: int) -> None:
    """SIGTERM, then SIGKILL, to each process of our cluster's session, by pid."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in session_processes(session):
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + 5
        while session_processes(session) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not session_processes(session):
            return


class Cluster:
    def __init__(self, address: str, session: int):
        self.address, self.session = address, session

    def processes(self) -> list[psutil.Process]:
        return session_processes(self.session)


@pytest.fixture(scope="module")
def cluster():
    """A Ray head on 127.0.0.1 (`ray start --head`), 2 CPUs, for the whole module; stopped by pid at the end."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    command = [
        sys.executable,  # the `ray` command of this interpreter's Ray, found without PATH
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=false",
        "--num-cpus=2",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    session = starter.pid
    try:
        output, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, output
        names = {process.name() for process in session_processes(session)}
        assert {"gcs_server", "raylet"} <= names, f"Ray's processes left the session we track: {names}"
        assert_loopback_only(session_processes(session), at_least=2)
        yield Cluster(f"127.0.0.1:{port}", session)
    finally:
        stop_session(session)
        assert not session_processes(session), "the cluster's processes outlived the module"
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    """A few hundred generated product images, three bad files among them, and a styles.csv."""
    root = tmp_path_factory.mktemp("ray-catalogue")
    names = make_catalogue(root / "images", IMAGES, seed=16)
    (root / "images" / "notes.jpg").write_text("this is text, not a picture")
    (root / "images" / "empty.png").write_bytes(b"")
    good = (root / "images" / names[0]).read_bytes()
    (root / "images" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    write_styles(root / "styles.csv", [Path(n).stem for n in names])
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, catalogue, embedder) -> tuple[Path, object]:
    """The local engine's bundle of `catalogue`, and its summary."""
    out = tmp_path_factory.mktemp("ray-reference") / "bundle"
    summary = build_bundle(
        catalogue / "images", out, embedder, metadata=catalogue / "styles.csv", batch_size=BATCH, quiet=True
    )
    return out, summary


@pytest.fixture(scope="module")
def small(tmp_path_factory, embedder) -> tuple[Path, Path]:
    """For the kill tests: SMALL generated images and a bad file, and the local engine's bundle of them."""
    root = tmp_path_factory.mktemp("ray-small")
    make_catalogue(root / "images", SMALL, seed=17)
    (root / "images" / "notes.jpg").write_text("this is text, not a picture")
    build_bundle(root / "images", root / "reference", embedder, batch_size=BATCH, quiet=True)
    return root / "images", root / "reference"


def assert_same_bundle(ours: Path, theirs: Path) -> None:
    """Embeddings within 1e-5 with the same top-5 for every row; every other file byte for byte."""
    a, b = load_bundle(ours), load_bundle(theirs)
    assert a.filenames == b.filenames
    assert np.abs(a.embeddings - b.embeddings).max() <= 1e-5
    assert (top5(a.embeddings) == top5(b.embeddings)).all()
    mine, reference = bundle_contents(ours), bundle_contents(theirs)
    for contents in (mine, reference):
        contents["files"].pop("embeddings.npy")
        contents["manifest"]["files"].pop("embeddings.npy")
    assert mine == reference


def top5(embeddings: np.ndarray) -> np.ndarray:
    distances = 2.0 - 2.0 * embeddings @ embeddings.T
    return np.argsort(distances, axis=1, kind="stable")[:, :5]


def ray_engine(cluster: Cluster, weights, **kwargs):
    from fashion_search.ray_engine import RayEngine

    return RayEngine(weights, address=cluster.address, quiet=True, **kwargs)


# The re-ordering, at Kaggle's size, without Ray


def test_chunk_assembler_puts_44k_rows_arriving_in_any_order_back_into_their_chunks(tmp_path):
    from fashion_search.pipeline import _plan_chunks
    from fashion_search.ray_engine import ChunkAssembler

    rows = 44_441  # Kaggle's fashion-product-images-small
    names = [f"{10000 + i}.jpg" for i in range(rows)]
    chunks = _plan_chunks(tmp_path, tmp_path, names, {name: "0" * 64 for name in names}, 32)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, 8)).astype(np.float32)
    bad = set(rng.choice(rows, 50, replace=False).tolist())
    errors = np.array(["broken" if i in bad else "" for i in range(rows)], dtype=object)
    shown = np.array([name.encode() for name in names], dtype=object)
    order = rng.permutation(rows)
    order = np.concatenate([order, rng.choice(rows, 500, replace=False)])  # 500 rows arrive twice (a retried block)
    assembler = ChunkAssembler(chunks)
    started = time.perf_counter()
    results = []
    for part in np.array_split(order, 1400):  # batches of ~32 rows, from anywhere in the catalogue
        results += assembler.add(part, vectors[part], shown[part], errors[part])
    print(f"re-assembled {rows} rows into {len(chunks)} chunks in {time.perf_counter() - started:.2f} s")
    assert assembler.missing == 0
    assert sorted(id(result.chunk) for result in results) == sorted(id(chunk) for chunk in chunks)  # each once
    for result in results:
        start = names.index(result.chunk.names[0])
        expected = [start + i for i in range(len(result.chunk.names)) if start + i not in bad]
        assert result.names == [names[i] for i in expected]
        np.testing.assert_array_equal(result.rows, vectors[expected])
        assert result.shown == [names[i].encode() for i in expected]
        assert result.skipped == [
            (names[i], "broken") for i in range(start, start + len(result.chunk.names)) if i in bad
        ]


# On the module's cluster (driver in this process, or precompute.py joining it with --ray-address)


def test_ray_bundle_equals_the_local_bundle(tmp_path, cluster, catalogue, reference, weights_file):
    out = tmp_path / "bundle"
    summary = build_bundle(
        catalogue / "images",
        out,
        ray_engine(cluster, weights_file, actor_cpus=1),  # 2 actors of 1 CPU: every CPU of the cluster
        metadata=catalogue / "styles.csv",
        batch_size=BATCH,
        quiet=True,
    )
    expected = reference[1]
    assert (summary.count, summary.embedded) == (IMAGES, IMAGES)
    assert sorted(summary.skipped) == sorted(expected.skipped) and len(summary.skipped) == 3
    assert_same_bundle(out, reference[0])


def test_an_actor_killed_mid_run_is_replaced_and_the_bundle_is_the_same(tmp_path, cluster, small, weights_file):
    images, reference = small
    out = tmp_path / "bundle"
    chunks = tmp_path / ".bundle.partial" / "chunks"
    total_chunks = -(-(SMALL + 1) // BATCH)
    seen: dict = {}

    def kill_one_actor():
        try:
            wait_for(lambda: len(list(chunks.glob("*.npz"))) >= 2, "two chunks saved")
            actors = wait_for(lambda: actor_processes(cluster.processes()), "the actors' processes")
            seen["listeners"] = listening_addresses([*cluster.processes(), psutil.Process()])
            seen["non_loopback"] = [entry for entry in seen["listeners"] if not is_loopback(entry[2])]
            victim = actors[0]
            seen["chunks at kill"] = len(list(chunks.glob("*.npz")))
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
            seen["killed"] = victim.pid
            seen["replacement"] = wait_for(
                lambda: [p.pid for p in actor_processes(cluster.processes()) if p.pid != victim.pid and p.is_running()],
                "an actor after the kill",
            )
        except BaseException as exc:  # reported by the main thread
            seen["error"] = exc

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    summary = build_bundle(
        images,
        out,
        ray_engine(cluster, weights_file, actors=1, actor_cpus=2),  # one actor: its death stops all the work
        batch_size=BATCH,
        quiet=True,
    )
    killer.join(60)
    assert "error" not in seen, seen.get("error")
    assert seen.get("killed"), "the actor was not killed"
    assert seen["chunks at kill"] < total_chunks, "the kill should land mid-run"
    assert seen["replacement"], "no actor took the killed one's place"
    print(f"killed actor {seen['killed']} after {seen['chunks at kill']} chunks; replaced by {seen['replacement']}")
    # Asserted while the actor was alive: Ray's processes and this driver listened on loopback only.
    assert len(seen["listeners"]) >= 3 and not seen["non_loopback"], seen["listeners"]
    assert (summary.count, summary.embedded, summary.resumed, len(summary.skipped)) == (SMALL, SMALL, 0, 1)
    assert_same_bundle(out, reference)


def test_the_driver_killed_mid_run_resumes_from_its_chunks(tmp_path, cluster, small, weights_file):
    images, reference = small
    out = tmp_path / "bundle"
    chunks = tmp_path / ".bundle.partial" / "chunks"
    args = [
        images,
        "--out",
        out,
        "--weights",
        weights_file,
        "--batch-size",
        BATCH,
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,
        "--ray-actors",
        1,
        "--ray-actor-cpus",
        2,
        "--quiet",
    ]
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "precompute.py"), *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: driver.poll() is not None or len(list(chunks.glob("*.npz"))) >= 2, "two chunks saved")
        assert driver.poll() is None, "the run ended before the kill"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    finished = len(list(chunks.glob("*.npz")))
    resumed_images = 0
    for path in chunks.glob("*.npz"):
        with np.load(path) as data:
            resumed_images += len(data["names"])
    assert 2 <= finished < -(-(SMALL + 1) // BATCH) and not out.exists(), "the kill should land mid-run"

    again = precompute(*args)
    assert again.returncode == 0, again.stderr
    assert f"{SMALL - resumed_images} embedded" in again.stdout and f"{resumed_images} resumed" in again.stdout
    assert "skipped notes.jpg: This file is not an image" in again.stderr and "Traceback" not in again.stderr
    assert_same_bundle(out, reference)
    assert not chunks.parent.exists()


def test_an_actor_with_another_model_than_the_driver_stops_the_run(tmp_path, cluster, weights_file):
    images = tmp_path / "images"
    make_catalogue(images, 4, seed=3)
    engine = ray_engine(cluster, weights_file, actors=1)
    engine.model = {**engine.model, "weights": "sha256:" + "0" * 64}  # as if the driver read another file
    with pytest.raises(PrecomputeError, match="every node must read the same weights file") as failure:
        build_bundle(images, tmp_path / "out", engine, batch_size=4, quiet=True)
    assert "run the same command again to resume" in str(failure.value)
    assert not (tmp_path / "out").exists()


def test_a_cluster_too_small_for_an_actor_is_a_clear_error(tmp_path, cluster, weights_file):
    images = tmp_path / "images"
    make_catalogue(images, 2, seed=4)
    with pytest.raises(PrecomputeError, match=r"No node of the Ray cluster has 4 CPU\(s\) for an actor"):
        build_bundle(images, tmp_path / "out", ray_engine(cluster, weights_file, actor_cpus=4), quiet=True)


# The command on its own


def test_without_an_address_the_command_starts_a_local_ray_on_loopback_only(tmp_path, embedder, weights_file):
    images = tmp_path / "images"
    make_catalogue(images, 24, seed=7)
    build_bundle(images, tmp_path / "reference", embedder, batch_size=8, quiet=True)
    args = [images, "--out", tmp_path / "out", "--weights", weights_file, "--batch-size", 8, "--engine", "ray"]
    args += ["--ray-actors", 1, "--ray-actor-cpus", 2]
    driver = psutil.Popen(
        [sys.executable, str(ROOT / "precompute.py"), *map(str, args), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[tuple, tuple] = {}
    names: set[str] = set()
    deadline = time.monotonic() + TIMEOUT_S
    while driver.poll() is None:  # while it runs, every socket its Ray opens
        assert time.monotonic() < deadline, "the command did not finish"
        processes = tree(driver)
        names |= {p.name() for p in processes if p.is_running()} if processes else set()
        for entry in listening_addresses(processes):
            seen[entry[2:]] = entry
        time.sleep(0.2)
    stdout, stderr = driver.communicate()
    assert driver.returncode == 0, stderr
    assert {"gcs_server", "raylet"} <= names, names
    assert len(seen) >= 3, f"Ray's sockets were not seen: {seen}"
    assert all(is_loopback(ip) for ip, _ in seen), f"Ray listened beyond loopback: {list(seen.values())}"
    print(f"listening sockets of the command's Ray: {sorted(seen.values())}")
    assert "24 images in" in stdout and "24 embedded" in stdout
    assert_same_bundle(tmp_path / "out", tmp_path / "reference")


def test_without_ray_installed_the_command_names_the_install(tmp_path):
    images = tmp_path / "images"
    make_catalogue(images, 2, seed=8)
    shadow = tmp_path / "no-ray"
    shadow.mkdir()
    (shadow / "ray.py").write_text('raise ModuleNotFoundError("No module named \'ray\'", name="ray")\n')
    result = precompute(
        images,
        "--out",
        tmp_path / "out",
        "--weights",
        "random",
        "--engine",
        "ray",
        env={**os.environ, "PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    assert result.returncode == 1
    assert "error: --engine ray needs Ray Data, which is not installed" in result.stderr
    assert "Run: pip install -r requirements-ray.txt" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_ray_client_address_is_refused_with_the_reason(tmp_path):
    images = tmp_path / "images"
    make_catalogue(images, 2, seed=9)
    address = "ray://127.0.0.1:10001"
    result = precompute(
        images, "--out", tmp_path / "out", "--weights", "random", "--engine", "ray", "--ray-address", address
    )
    assert result.returncode == 1 and "Ray Client address, which does not carry Ray Data" in result.stderr
    assert "Traceback" not in result.stderr
