"""The FastAPI application."""

from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..calibration.background import JobRunner, JobStore
from ..calibration.params import Served, resolve
from ..engine import Engine
from ..monitor.responselog import LogCollector, open_log
from ..settings import Settings
from .metrics import install_metrics
from .openai import routes as openai
from .routes import calibrate, feedback, generate, info, monitor, score
from .routes.ui import mount_ui
from .security import ApiKeyMiddleware, BodyLimitMiddleware


def serve_params(app: FastAPI, served: Served) -> None:
    """Put `served` in effect: one attribute swap, so a request sees old or new, never a mix."""
    app.state.served = served


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The app over an engine that is already started (the caller owns and stops it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.response_log is not None:
            app.state.response_log.start()  # again, when an earlier lifespan's shutdown closed it
        yield
        app.state.jobs.shutdown()  # a running calibration job stops and is marked interrupted
        if app.state.response_log is not None:
            app.state.response_log.close()  # writes what is queued

    app = FastAPI(title="halluwatch", version="0.1.0", lifespan=lifespan,
                  responses={400: {"description": "malformed request body"},
                             401: {"description": "missing or wrong API key (when one is set)"},
                             413: {"description": "request body too large"}},
                  description="Greedy generation with live hallucination-risk signals (ℏₛ, PRI).")
    app.state.settings = settings
    app.state.engine = engine
    app.state.streams = 0  # streaming responses in progress
    serve_params(app, resolve(settings, engine.lm.fingerprint))

    def activated() -> None:  # a job activated its params: serve what a restart would, from the next request
        serve_params(app, resolve(settings, engine.lm.fingerprint))

    store = JobStore(settings.state_dir / "jobs.sqlite3")
    store.mark_interrupted()
    app.state.jobs = JobRunner(store, engine, settings, activated)
    app.state.response_log = open_log(settings, engine.lm)

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:  # added after the body limit, so it runs first
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key, metrics_public=settings.metrics_public)
    app.include_router(generate.router)
    app.include_router(score.router)
    app.include_router(info.router)
    app.include_router(calibrate.router)
    app.include_router(openai.router)
    app.include_router(monitor.router)
    app.include_router(feedback.router)
    mount_ui(app)
    metrics = install_metrics(app)  # last, so its middleware is outermost and also counts 401/413
    metrics.registry.register(LogCollector(lambda: app.state.response_log))
    return app
