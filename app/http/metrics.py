"""Prometheus metrics: GET /metrics.

`install_metrics(app)` gives the app its own `CollectorRegistry` (so several apps in one process,
as in the tests, never share or collide), a pure-ASGI middleware that counts requests and times
them by route *template* (`/calibrate/{job_id}`, never the raw path), and the `/metrics` route.
`observe_response(app, body, exchange)` records one finished response; call it with the
/generate-shaped body (`app.assessment.response_body`'s dict) of every finished /generate, /v1 or
/score response (it also appends the response log entry).
Engine and calibration-job gauges, and the drift of each served calibration (`app.state.drift`,
app/monitor/drift.py), are read when /metrics is scraped. docs/operations.md lists every metric.
"""

import logging
import time

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..monitor.drift import DriftTracker
from ..monitor.entry import Exchange
from ..monitor.flagging import is_flagged
from ..settings import Settings

log = logging.getLogger("halluwatch.metrics")

QUADRANT_LABELS = ("Q1", "Q2", "Q3", "Q4", "none")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
QUEUE_CAPACITY = "Jobs that may wait for the engine before requests get 503 (HALLUWATCH_QUEUE_DEPTH)"
KV_CACHE = "Bytes of the running batch's KV caches, as allocated"
PROMPT_CACHE = "Bytes of prompts' KV caches kept for later prompts to reuse (at most HALLUWATCH_PROMPT_CACHE_MB)"
UNMATCHED = "unmatched"  # route label of requests no route matched (404s): one series, not one per path

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATE_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500)
HBAR_BUCKETS = (0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75, 3, 3.5, 4, 5, 7.5, 10)
PRI_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50)
RISK_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class Metrics:
    """The metric objects of one app, in the app's own registry."""

    def __init__(self, app: FastAPI):
        settings = getattr(app.state, "settings", None) or Settings()
        self.flag_risk = settings.flag_risk
        self.registry = r = CollectorRegistry()
        self.requests = Counter("halluwatch_http_requests", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("halluwatch_http_request_duration_seconds",
                                 "Time from request to the end of the response (whole stream for SSE), by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("halluwatch_time_to_first_token_seconds",
                              "Time from submission to the first generated token", buckets=TTFT_BUCKETS, registry=r)
        self.queue_wait = Histogram("halluwatch_queue_wait_seconds",
                                    "Time a generation waited for room in the engine's batch", buckets=QUEUE_BUCKETS,
                                    registry=r)
        self.decode_rate = Histogram("halluwatch_request_decode_tokens_per_second",
                                     "Each response's own decode rate after its first token (it shares the batch)",
                                     buckets=RATE_BUCKETS, registry=r)
        self.tokens = Counter("halluwatch_generated_tokens", "Completion tokens of finished responses", registry=r)
        self.cached_tokens = Counter("halluwatch_cached_prompt_tokens",
                                     "Prompt tokens of finished responses not prefilled: the prompt cache held them",
                                     registry=r)
        self.responses = Counter("halluwatch_responses", "Finished responses by risk quadrant (none: no params)",
                                 ["quadrant"], registry=r)
        self.hbar_s = Histogram("halluwatch_response_hbar_s", "Response-level ℏₛ (mean of the top-5 steps)",
                                buckets=HBAR_BUCKETS, registry=r)
        self.pri = Histogram("halluwatch_response_pri", "Response-level PRI (mean of the top-5 steps)",
                             buckets=PRI_BUCKETS, registry=r)
        self.risk = Histogram("halluwatch_response_risk", "Response `risk` probability (assessed responses)",
                              buckets=RISK_BUCKETS, registry=r)
        self.assessed = Counter("halluwatch_assessed_responses",
                                "Finished responses assessed by a calibration (with a quadrant or a risk)", registry=r)
        self.flagged = Counter("halluwatch_flagged_responses", "Assessed responses flagged: risk probability >= "
                               "HALLUWATCH_FLAG_RISK, else (no risk) quadrant Q2", registry=r)
        self.out_of_distribution = Counter(
            "halluwatch_out_of_distribution_responses",
            "Assessed responses whose probe input lay outside its training range (risk.in_distribution false)",
            registry=r)
        for q in QUADRANT_LABELS:
            self.responses.labels(q)  # every quadrant is exported from the start, at 0
        self.drift = DriftTracker(settings.drift_window, settings.drift_min_live, lambda: _served(app))
        r.register(_StateCollector(app, settings))
        r.register(_DriftCollector(self.drift))

    def observe(self, body: dict) -> None:
        usage, scores = body.get("usage") or {}, body.get("scores") or {}
        self.tokens.inc(usage.get("completion_tokens") or 0)
        self.cached_tokens.inc(usage.get("cached_tokens") or 0)
        timing = body.get("timing") or {}
        for histogram, key in ((self.ttft, "ttft_s"), (self.queue_wait, "queue_s"), (self.decode_rate, "tokens_per_s")):
            if timing.get(key) is not None:
                histogram.observe(timing[key])
        if scores.get("hbar_s") is not None:
            self.hbar_s.observe(scores["hbar_s"])
        if scores.get("pri") is not None:
            self.pri.observe(scores["pri"])
        quadrant = body.get("quadrant")
        self.responses.labels(quadrant["name"] if quadrant else "none").inc()
        if (flagged := is_flagged(body, self.flag_risk)) is not None:
            self.assessed.inc()
            self.flagged.inc(flagged)
        if (risk := body.get("risk")) is not None:
            self.risk.observe(risk["probability"])
            self.out_of_distribution.inc(risk.get("in_distribution") is False)
        self.drift.observe(body)


def _served(app: FastAPI) -> tuple:
    """The calibrations the app serves now (none before it has params)."""
    served = getattr(app.state, "served", None)
    return served.calibrations if served is not None else ()


class _StateCollector:
    """Gauges read at scrape time: engine queue depth and capacity, busy flag, batch size, KV and
    prompt cache bytes, params loaded, calibration jobs by state."""

    def __init__(self, app: FastAPI, settings: Settings):
        self.app = app
        self.queue_capacity = settings.queue_depth

    def describe(self):  # static descriptions, so registering never touches the app's state
        yield GaugeMetricFamily("halluwatch_engine_queue_depth", "Jobs waiting for the engine")
        yield GaugeMetricFamily("halluwatch_engine_queue_capacity", QUEUE_CAPACITY)
        yield GaugeMetricFamily("halluwatch_engine_busy", "1 while the engine runs a job")
        yield GaugeMetricFamily("halluwatch_engine_batch_size", "Generations in the engine's running batch")
        yield GaugeMetricFamily("halluwatch_kv_cache_bytes", KV_CACHE)
        yield GaugeMetricFamily("halluwatch_prompt_cache_bytes", PROMPT_CACHE)
        yield GaugeMetricFamily("halluwatch_params_loaded", "1 when calibrated params are in effect")
        yield GaugeMetricFamily("halluwatch_calibration_jobs", "Calibration jobs by state", labels=["state"])

    def collect(self):
        state = self.app.state
        engine = getattr(state, "engine", None)
        if engine is not None:
            yield GaugeMetricFamily("halluwatch_engine_queue_depth", "Jobs waiting for the engine",
                                    value=engine.queue_depth)
            yield GaugeMetricFamily("halluwatch_engine_queue_capacity", QUEUE_CAPACITY, value=self.queue_capacity)
            yield GaugeMetricFamily("halluwatch_engine_busy", "1 while the engine runs a job",
                                    value=1.0 if engine.busy else 0.0)
            yield GaugeMetricFamily("halluwatch_engine_batch_size", "Generations in the engine's running batch",
                                    value=engine.batch_size)
            yield GaugeMetricFamily("halluwatch_kv_cache_bytes", KV_CACHE, value=engine.kv_cache_bytes)
            yield GaugeMetricFamily("halluwatch_prompt_cache_bytes", PROMPT_CACHE, value=engine.prompt_cache_bytes)
        served = getattr(state, "served", None)
        yield GaugeMetricFamily("halluwatch_params_loaded", "1 when calibrated params are in effect",
                                value=1.0 if served is not None and served.params is not None else 0.0)
        jobs = getattr(state, "jobs", None)
        if jobs is not None:
            counts = dict.fromkeys(JOB_STATES, 0)
            try:
                for job in jobs.store.all():
                    counts[job["status"]] = counts.get(job["status"], 0) + 1
            except Exception:  # a scrape must not fail because the jobs database is busy
                log.exception("reading calibration jobs for /metrics failed")
            family = GaugeMetricFamily("halluwatch_calibration_jobs", "Calibration jobs by state", labels=["state"])
            for name, n in counts.items():
                family.add_metric([name], n)
            yield family


class _DriftCollector:
    """Gauges of the drift of each served calibration's signals, where it is measured (see DriftTracker)."""

    def __init__(self, tracker: DriftTracker):
        self.tracker = tracker

    def describe(self):
        return self._families()

    def collect(self):
        families = self._families()
        try:
            snapshot = self.tracker.snapshot()
        except Exception:  # a scrape must not fail because of drift
            log.exception("measuring drift for /metrics failed")
            return families
        for calibration, signals in snapshot.items():
            for signal, result in signals.items():
                if "reason" not in result:
                    families[0].add_metric([calibration, signal], result["ks"])
                    families[1].add_metric([calibration, signal], result["psi"])
        return families

    @staticmethod
    def _families() -> list:
        labels = ["calibration", "signal"]
        return [GaugeMetricFamily("halluwatch_drift_ks", "Two-sample KS statistic of the live window against the "
                                  "calibration's reference (signal: risk, probe_distance_ratio)", labels=labels),
                GaugeMetricFamily("halluwatch_drift_psi", "Population stability index of the live window against "
                                  "the calibration's reference", labels=labels)]


def route_template(scope, root_path: str = "") -> str:
    """The template of the route that handled the request (`/calibrate/{job_id}`, `/static/{path}` for a
    mount), or UNMATCHED. `root_path`: the scope's root_path before routing (a mount extends it)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if template:
        return template
    mounted = scope.get("root_path", "")
    if mounted != root_path and mounted.startswith(root_path):
        return mounted[len(root_path):] + "/{path}"
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI (streams pass through untouched): requests by route/status and their duration."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        root_path = scope.get("root_path", "")
        status = 500  # an exception before the response starts becomes a 500 outside us

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = route_template(scope, root_path)
            self.metrics.requests.labels(scope.get("method", ""), route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def install_metrics(app: FastAPI) -> Metrics:
    """Give `app` its registry, the request middleware and GET /metrics (call before the app starts)."""
    metrics = Metrics(app)
    app.state.metrics = metrics
    app.state.drift = metrics.drift
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def scrape() -> Response:  # sync: runs in the threadpool (the jobs gauge reads SQLite)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False,
                      summary="Prometheus metrics")
    return metrics


def observe_response(app: FastAPI, body: dict, exchange: Exchange | None = None) -> dict:
    """Record one finished response (its /generate-shaped body) in the metrics and, given the
    request's `exchange`, in the response log (queued, never blocking); returns `body`."""
    metrics = getattr(app.state, "metrics", None)
    if metrics is not None:
        try:
            metrics.observe(body)
        except Exception:  # metrics never break a response
            log.exception("recording response metrics failed")
    response_log = getattr(app.state, "response_log", None)
    if exchange is not None and response_log is not None:
        try:
            response_log.record(exchange, body)
        except Exception:  # nor does the log
            log.exception("recording the response log entry failed")
    return body
