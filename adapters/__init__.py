"""Loading models and capturing their hidden states (no HTTP here).

Importing this package first preloads a fast BLAS for MLX on Linux (see `blas.py`), so import
it before anything imports `mlx`.
"""

from .blas import preload_fast_blas

BLAS = preload_fast_blas()
