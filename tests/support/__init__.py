"""Helpers shared by the tests (and the benches that reuse them): tiny models, a live server,
synthetic data, the numpy reference of the signals, and params bound to a loaded model."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout the tests run from (read only)
