"""Handing freed memory back: MLX's buffer cache emptied, glibc's arenas trimmed."""

import sys

import mlx.core as mx
import pytest

from adapters import memory
from adapters.memory import release_memory


def test_release_memory_empties_mlx_buffer_cache():
    for _ in range(3):
        mx.eval(mx.ones((1 << 20,)) * 2)  # freed buffers stay in MLX's cache
    assert mx.get_cache_memory() > 0
    release_memory()
    assert mx.get_cache_memory() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_trim_is_found_on_linux():
    assert memory._MALLOC_TRIM is not None
