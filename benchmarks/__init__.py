"""The speed suite: every figure measured side by side with its reference on this machine (`python -m benchmarks`)."""

import os
import sys
from pathlib import Path

# No telemetry from anything the benchmarks run; the apps they start inherit these.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Figure 6's Hub stand-in speaks LFS, not Xet; set before any figure imports huggingface_hub (gradio does).
os.environ["HF_HUB_DISABLE_XET"] = "1"

# The suite uses the tests' generated catalogues and Hub stand-in (tests/big_catalogue.py, tests/hub_standin.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
