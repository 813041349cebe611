"""Helpers shared by the tests (and the benches that reuse them): tiny models, a live server,
synthetic data, the numpy reference of the signals, and params bound to a loaded model."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout the tests run from (read only)


def load_bench(name: str):
    """The module of bench/NAME.py (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
