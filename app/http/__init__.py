"""The HTTP service: the FastAPI app, its routes, schemas, security and metrics."""
