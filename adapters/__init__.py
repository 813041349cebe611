"""Loading models and capturing their hidden states (no HTTP here).

Importing this package first preloads a fast BLAS for MLX on Linux (see `blas.py`), so import
it before anything imports `mlx`. It also releases the main thread's MLX streams at exit: MLX
needs each thread to do so itself, or the process can abort while it shuts down ("terminate
called without an active exception", exit status 134). The engine thread releases its own.
"""

import atexit
import sys

from .blas import preload_fast_blas

BLAS = preload_fast_blas()


@atexit.register
def _release_main_thread_streams() -> None:
    if "mlx.core" in sys.modules:  # mlx-lm makes a stream on the thread that imports it
        sys.modules["mlx.core"].clear_streams()
