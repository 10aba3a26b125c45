"""The MCP Inspector's CLI, an MCP client the project did not write: `npx @modelcontextprotocol/inspector --cli`.

    python tests/inspector.py        # install it if missing (scripts/test.sh does), and say where and on which Node

Version 0.15.0 with its whole tree, pinned by tests/mcp_inspector/package-lock.json (later versions ask for Node 22;
Debian's Node and this machine's run 0.15), is installed once per lock file with `npm ci` into a cache folder, from
which npx runs it without asking the registry again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent / "mcp_inspector"  # package.json and package-lock.json
INSTALL_TIMEOUT = 900  # seconds for npm ci on a slow registry connection
RUN_TIMEOUT = 300  # seconds for one call: a first tool call on a busy 2-core machine can take a while


def cache_folder() -> Path:
    lock = hashlib.sha256((PACKAGE / "package.json").read_bytes() + (PACKAGE / "package-lock.json").read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fashion-search-tests" / f"mcp-inspector-{lock.hexdigest()[:16]}"


def install() -> Path:
    """The folder the pinned Inspector is installed in, installing it first if it is not there.

    Raises:
        RuntimeError: Node.js or npm is missing, or npm ci failed (its output in the message).
    """
    folder = cache_folder()
    if (folder / "node_modules" / ".bin" / "mcp-inspector").exists():
        return folder
    if not (shutil.which("npm") and shutil.which("node")):
        raise RuntimeError(
            "The MCP Inspector needs Node.js and npm: apt-get install nodejs npm (scripts/test.sh does)."
        )
    staging = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PACKAGE / name, staging / name)
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=staging,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm ci of the MCP Inspector failed:\n{done.stdout}\n{done.stderr}")
    try:
        staging.rename(folder)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`npx @modelcontextprotocol/inspector --cli ARGS` with the Inspector installed in `folder`."""
    command = ["npx", "--no-install", "@modelcontextprotocol/inspector", "--cli", *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=RUN_TIMEOUT)


if __name__ == "__main__":
    try:
        where = install()
    except RuntimeError as exc:
        sys.exit(f"error: {exc}")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"MCP Inspector 0.15.0 in {where}, Node {node}")
