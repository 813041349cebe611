"""Handing memory that finished work freed back to the system.

MLX keeps freed buffers in its own cache for reuse, and glibc's malloc keeps freed pages in its
arenas (a burst of requests leaves the process hundreds of MB above what it holds). Neither is
returned by itself; `release_memory` returns both, for a caller that has gone idle.
"""

import ctypes

import mlx.core as mx


def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Free MLX's buffer cache, then (glibc) the free pages of every malloc arena."""
    mx.clear_cache()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
