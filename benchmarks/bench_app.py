"""Figure 3: the app over HTTP with gradio_client — round trip vs a no-op app, and 8 concurrent clients vs 1."""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import data
from benchmarks.bench_query import QUERY_SIZE
from benchmarks.report import Row, ms, ratio, value, verdict
from benchmarks.servers import Server, ask, client
from benchmarks.timing import Samples

CLIENTS = 8


def run(ctx, runs: int, repeat: int, per_client: int) -> list[Row]:
    from contextlib import ExitStack

    from fashion_search.bundle import load_bundle
    from fashion_search.embedder import cpu_has_bf16
    from fashion_search.search import Searcher
    from fashion_search.webapp import Recommender

    log = ctx.log
    catalogue = data.big_bundle(ctx.rows, ctx.weights, log=log)
    work = Path(tempfile.mkdtemp(prefix="bench-app-"))
    rng = np.random.default_rng(11)
    queries = []
    for i in range(4):
        path = work / f"query-{i}.jpg"
        path.write_bytes(data.jpeg_bytes(data.draw_product(rng, QUERY_SIZE)))
        queries.append(path)

    log(f"figure 3: starting app.py and the no-op app on {ctx.rows:,} rows ...")
    with ExitStack() as servers:
        app, noop = (
            servers.enter_context(Server.app(catalogue, ctx.weights)),
            servers.enter_context(Server.noop(catalogue)),
        )
        log(f"  app ready after {app.wait_ready():.1f} s, no-op after {noop.wait_ready():.1f} s")
        # The option, for information: app.py in bfloat16 (it follows a bundle made in bfloat16), where the CPU can.
        bf16 = servers.enter_context(Server.app(data.bfloat16_twin(catalogue), ctx.weights)) if cpu_has_bf16() else None
        if bf16 is not None:
            log(f"  bfloat16 app ready after {bf16.wait_ready():.1f} s")
        app_client, noop_client = client(app.url), client(noop.url)
        bf16_client = client(bf16.url) if bf16 is not None else None
        for path in queries:  # warm the servers and the clients
            for warming in (app_client, noop_client, bf16_client):
                if warming is not None:
                    ask(warming, path)
        # The in-process query on the same bundle and files, in this process, for the target's sum.
        recommender = Recommender(Searcher(ctx.embedder, load_bundle(catalogue, verify_images=False)))
        for path in queries:
            recommender.recommend(path.read_bytes())

        trip_app, trip_noop, inproc = Samples("s"), Samples("s"), Samples("s")
        qps_one, qps_many, noop_one, noop_many, bf16_one, bf16_many = (Samples("q/s") for _ in range(6))
        client_cpu, server_cpu = Samples("s"), Samples("s")
        sequential = max(2, CLIENTS * per_client // 2)
        for r in range(runs):
            log(f"  round {r + 1}/{runs}: round trips ...")
            trip_noop.values.append(_median_trip(noop_client, queries, repeat))
            trip_app.values.append(_median_trip(app_client, queries, repeat))
            inproc.values.append(_median(lambda p: recommender.recommend(p.read_bytes()), queries, repeat))
            log(f"  round {r + 1}/{runs}: 1 client sequential, then {CLIENTS} concurrent clients (app, no-op) ...")
            qps_one.values.append(_sequential_qps(app_client, queries, sequential))
            cpu, served = time.process_time(), _cpu_seconds(app.proc.pid)
            qps_many.values.append(_concurrent_qps(app.url, queries, CLIENTS, per_client))
            client_cpu.values.append((time.process_time() - cpu) / (CLIENTS * per_client))
            server_cpu.values.append((_cpu_seconds(app.proc.pid) - served) / (CLIENTS * per_client))
            noop_one.values.append(_sequential_qps(noop_client, queries, sequential))
            noop_many.values.append(_concurrent_qps(noop.url, queries, CLIENTS, per_client))
            if bf16_client is not None:
                bf16_one.values.append(_sequential_qps(bf16_client, queries, sequential))
                bf16_many.values.append(_concurrent_qps(bf16.url, queries, CLIENTS, per_client))
        log(
            f"  trip app {trip_app.values}, noop {trip_noop.values}, in-process {inproc.values}, "
            f"qps 1 {qps_one.values}, qps {CLIENTS} {qps_many.values}, no-op qps 1 {noop_one.values}, "
            f"no-op qps {CLIENTS} {noop_many.values}, client CPU per query {client_cpu.values}, "
            f"app CPU per query {server_cpu.values}, "
            f"bfloat16 app qps 1 {bf16_one.values}, qps {CLIENTS} {bf16_many.values}"
        )
        recommender = None
    budget = trip_noop.median + inproc.median
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    capacity = cores / server_cpu.median
    return [
        Row("3: gradio_client round trip, no-op app (same components)", "—", ms(trip_noop), "", "reference"),
        Row("3: in-process query on the same files (`Recommender.recommend`)", "—", ms(inproc), "", "reference"),
        Row(
            f"3: gradio_client round trip, app.py ({ctx.rows // 1000}k rows, 1 client)",
            f"no-op + in-process {budget * 1e3:.0f} ms",
            ms(trip_app),
            ratio(trip_app.median / budget),
            "≤ 1.10 ×",
            verdict(trip_app.median <= 1.10 * budget),
        ),
        Row("3: queries/s, 1 client sequential", "—", value(qps_one), "", "reference"),
        Row(
            f"3: queries/s, {CLIENTS} concurrent clients",
            f"1 client {qps_one.median:.2f} q/s",
            value(qps_many),
            ratio(qps_many.median / qps_one.median),
            "(information: the clients share the app's 2 cores; see the app's CPU per query)",
        ),
        Row(
            f"3: queries/s of the no-op app, {CLIENTS} concurrent clients (what Gradio + clients allow here)",
            f"1 client {noop_one.median:.2f} q/s",
            value(noop_many),
            ratio(noop_many.median / noop_one.median),
            "(information: the ceiling of the ratio above)",
        ),
        Row(
            f"3: CPU the {CLIENTS} gradio_client threads spend per query (same machine, shares the 2 cores)",
            "—",
            ms(client_cpu),
            "",
            "(information)",
        ),
        Row(
            f"3: CPU app.py spends per query under {CLIENTS} concurrent clients (all its threads)",
            "—",
            ms(server_cpu),
            "",
            "(information)",
        ),
        Row(
            f"3: queries/s with the clients on other machines, PROJECTED as {cores} cores / app CPU per query "
            "(not measured)",
            f"1 client {qps_one.median:.2f} q/s",
            f"{capacity:.3g} q/s",
            ratio(capacity / qps_one.median),
            "≥ 2 ×",
            verdict(capacity >= 2 * qps_one.median),
        ),
    ] + (
        [
            Row(
                "3: queries/s, 1 client, app.py in bfloat16 (`--precision bfloat16`, the option)",
                "—",
                value(bf16_one),
                "",
                "(information)",
            ),
            Row(
                f"3: queries/s, {CLIENTS} concurrent clients, app.py in bfloat16",
                f"float32 app {qps_many.median:.3g} q/s; its 1 client {bf16_one.median:.2f} q/s",
                value(bf16_many),
                f"{ratio(bf16_many.median / qps_many.median)} float32, "
                f"{ratio(bf16_many.median / bf16_one.median)} 1 client",
                "(information)",
            ),
        ]
        if bf16_one.values
        else []
    )


def _median(func, queries, repeat: int) -> float:
    times = []
    for i in range(repeat):
        path = queries[i % len(queries)]
        start = time.perf_counter()
        func(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _median_trip(client_, queries, repeat: int) -> float:
    return _median(lambda path: ask(client_, path), queries, repeat)


def _sequential_qps(client_, queries, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        ask(client_, queries[i % len(queries)])
    return count / (time.perf_counter() - start)


def _concurrent_qps(url: str, queries, clients: int, per_client: int) -> float:
    """`clients` threads, each with its own Client, each asking `per_client` queries back to back."""
    clients_ = [client(url) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def work(c, offset: int) -> None:
        barrier.wait()
        try:
            for i in range(per_client):
                ask(c, queries[(offset + i) % len(queries)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c, n)) for n, c in enumerate(clients_)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} concurrent clients failed: {errors[0]!r}")
    return clients * per_client / elapsed


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system
