"""HTTP API, schemas, engine thread and CLI of halluwatch."""

import adapters  # noqa: F401  (preloads the fast BLAS before anything imports mlx)
