"""The machine a benchmark ran on: CPU, cores, the flags that matter, library versions, load."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from fashion_search.embedder import cpu_flags

PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn", "pillow", "gradio", "gradio_client")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def describe() -> dict:
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory": f"{memory_gb():.1f} GB",
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
    }


def describe_markdown(info: dict, load_before: str, load_after: str) -> str:
    versions_text = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return "\n".join(
        [
            f"- CPU: {info['cpu']}, {info['cores']} cores ({info['usable cores']} usable), {info['memory']} RAM",
            f"- AVX512F: {'yes' if info['avx512f'] else 'no'}, AVX512_BF16: {'yes' if info['avx512_bf16'] else 'no'}, "
            f"AMX_BF16: {'yes' if info['amx_bf16'] else 'no'}",
            f"- Python {info['python']} on {info['os']}; {versions_text}",
            f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}",
        ]
    )
