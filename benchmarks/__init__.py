"""The speed suite: every figure measured side by side with its reference on this machine (`python -m benchmarks`)."""

import sys
from pathlib import Path

# The suite uses the tests' generated catalogues and Hub stand-in (tests/big_catalogue.py, tests/hub_standin.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
