"""Engines for tests: started, and stopped however the test ends."""

from contextlib import contextmanager


@contextmanager
def running_engine(model: str, **options):
    """An Engine over `model` (native precision unless told otherwise), started for the block."""
    from app.engine import Engine

    engine = Engine(str(model), **{"precision": "native", **options})
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
