"""The speed suite: every figure measured side by side with its reference on this machine (`python -m benchmarks`)."""
