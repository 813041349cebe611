"""The FastAPI application."""

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .engine import Engine
from .jobs import JobRunner, JobStore
from .params import Params, find_params, load_params
from .metrics import install_metrics
from .routes import calibrate, generate, info, openai, score
from .routes.ui import mount_ui
from .security import ApiKeyMiddleware, BodyLimitMiddleware
from .settings import Settings


def resolve_params(settings: Settings, model_id: str) -> tuple[Params | None, str | None]:
    """The params in effect (the --params file, else the newest match) and, if none, why."""
    if settings.params is not None:
        return load_params(settings.params), None
    params = find_params(model_id, settings.params_dir)
    if params is None:
        return None, (f"no calibrated params for model {model_id!r} in {settings.params_dir}; "
                      "run `halluwatch calibrate` or pass --params")
    return params, None


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The app over an engine that is already started (the caller owns and stops it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.jobs.shutdown()  # a running calibration job stops and is marked interrupted

    app = FastAPI(title="halluwatch", version="0.1.0", lifespan=lifespan,
                  responses={400: {"description": "malformed request body"},
                             401: {"description": "missing or wrong API key (when one is set)"},
                             413: {"description": "request body too large"}},
                  description="Greedy generation with live hallucination-risk signals (ℏₛ, PRI).")
    app.state.settings = settings
    app.state.engine = engine
    app.state.streams = 0  # streaming responses in progress
    app.state.params, app.state.params_reason = resolve_params(settings, engine.lm.model_id)

    def activate(result: dict, path) -> None:  # one attribute swap: the next request sees the new params
        app.state.params, app.state.params_reason = load_params(path), None

    store = JobStore(settings.state_dir / "jobs.sqlite3")
    store.mark_interrupted()
    app.state.jobs = JobRunner(store, engine, settings.params_dir, settings.reports_dir, activate)

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:  # added after the body limit, so it runs first
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key, metrics_public=settings.metrics_public)
    app.include_router(generate.router)
    app.include_router(score.router)
    app.include_router(info.router)
    app.include_router(calibrate.router)
    app.include_router(openai.router)
    mount_ui(app)
    install_metrics(app)  # last, so its middleware is outermost and also counts 401/413
    return app
