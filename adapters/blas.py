"""Make MLX's CPU matmuls use OpenBLAS on Linux.

The Linux `mlx[cpu]` wheel links a reference BLAS. Loading Debian's OpenBLAS with RTLD_GLOBAL
before MLX is imported makes MLX's BLAS symbols resolve to it (float32 matmuls get ~20–50×
faster). This module must not import mlx. Set HALLUWATCH_NO_FAST_BLAS=1 to opt out.
"""

import ctypes
import os
import sys

OPENBLAS = "libopenblas.so.0"


def preload_fast_blas() -> str:
    """Preload OpenBLAS if possible; return the name of the BLAS MLX will use."""
    if sys.platform == "darwin":
        return "accelerate"
    if os.environ.get("HALLUWATCH_NO_FAST_BLAS"):
        return "reference (HALLUWATCH_NO_FAST_BLAS is set)"
    if "mlx.core" in sys.modules:
        return "reference (mlx was imported before the OpenBLAS preload)"
    try:
        ctypes.CDLL(OPENBLAS, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return "reference (libopenblas.so.0 not found: apt-get install libopenblas0-pthread)"
    return "openblas"


def check_matmul() -> None:
    """Raise if a small float32 matmul through MLX disagrees with numpy."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((33, 64), dtype=np.float32)
    b = rng.standard_normal((64, 17), dtype=np.float32)
    got = np.array(mx.matmul(mx.array(a), mx.array(b)))
    if not np.allclose(got, a @ b, rtol=1e-4, atol=1e-4):
        raise RuntimeError(
            "MLX float32 matmul is wrong with the preloaded BLAS; "
            "set HALLUWATCH_NO_FAST_BLAS=1 to use MLX's own BLAS"
        )
