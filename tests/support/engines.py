"""Engines for tests: started, and stopped however the test ends."""

from contextlib import contextmanager


@contextmanager
def running_engine(model: str, **options):
    """An Engine over `model` (native precision and the served prompt cache unless told otherwise),
    started for the block."""
    from app.engine import Engine

    from app.settings import Settings

    defaults = {"precision": "native", "prompt_cache_mb": Settings.model_fields["prompt_cache_mb"].default}
    engine = Engine(str(model), **{**defaults, **options})
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
