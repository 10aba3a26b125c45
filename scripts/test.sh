#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite: Debian packages (headless Chromium for the browser test,
# Fashion-MNIST for the demo-asset test, Node.js and npm for the MCP Inspector), the Python packages, the MCP Inspector
# (pinned by tests/mcp_inspector/, from the npm registry into a cache folder, once), then ruff (lint, format) and
# pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
command -v npx >/dev/null || missing+=(nodejs npm)
command -v fincore >/dev/null || missing+=(util-linux)  # tests/mounted.py: what a start read
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
python3 -m pip install -q --disable-pip-version-check -r requirements-dev.txt
python3 tests/inspector.py  # tests/test_mcp.py's second MCP client
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest "$@"
