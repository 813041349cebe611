"""Shared pytest setup: OpenBLAS preload and session-cached tiny model folders."""

import os

# Must come before anything imports mlx: it preloads OpenBLAS for float32 CPU matmuls.
import adapters  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Everything the service writes goes to a fresh data folder: never the user's, never the checkout.
import tempfile  # noqa: E402

os.environ["HALLUWATCH_HOME"] = tempfile.mkdtemp(prefix="halluwatch-test-home-")
# Hypothesis (the fuzz test, through schemathesis) keeps its caches there rather than in ./.hypothesis.
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = tempfile.mkdtemp(prefix="halluwatch-test-hypothesis-")

from pathlib import Path  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402
from support.tiny_models import make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Callable[..., Path]:
    """``get(arch, seed=0) -> Path``: a tiny model folder, built once per session."""
    built: dict = {}

    def get(arch: str, seed: int = 0) -> Path:
        if (arch, seed) not in built:
            out = tmp_path_factory.mktemp(f"tiny_{arch}_s{seed}", numbered=True)
            built[arch, seed] = make_tiny_model(arch, out, seed=seed)
        return built[arch, seed]

    return get


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    """An engine over the tiny llama; modules that need another model or settings define their own."""
    from support.engines import running_engine

    with running_engine(tiny_model_path("llama")) as e:
        yield e
