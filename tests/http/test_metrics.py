"""GET /metrics on a real uvicorn server: counters and histograms move with requests; gauges at scrape."""

import json

import httpx
import pytest
from support.live_server import live_server as serve
from openai import OpenAI
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_openai import CHAT, PROMPT, build_app

from app.http.metrics import JOB_STATES, QUADRANT_LABELS, install_metrics, observe_response


@pytest.fixture(scope="module")
def base(engine, tmp_path_factory):
    with serve(build_app(engine, tmp_path_factory)) as url:
        yield url


@pytest.fixture(scope="module")
def http(base):
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c


def scrape(http) -> dict:
    """{(sample name, frozenset(labels)): value} of one /metrics scrape."""
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_and_histograms_move(base, http):
    before = scrape(http)
    client = OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    bodies = [http.post("/generate", json={"prompt": PROMPT, "max_tokens": 6}).json()]
    stream = http.post("/generate", json={"prompt": PROMPT, "max_tokens": 5, "stream": True})
    bodies.append(sse_done(stream.text))
    chat = client.chat.completions.create(model="m", messages=CHAT, max_tokens=4)
    comp = list(client.completions.create(model="m", prompt=PROMPT, max_tokens=3, stream=True,
                                          stream_options={"include_usage": True}))
    for job_id in ("abc", "def"):
        assert http.get(f"/calibrate/{job_id}").status_code == 404
    assert http.get("/no/such/path").status_code == 404
    after = scrape(http)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    req = "halluwatch_http_requests_total"
    assert delta(req, method="POST", route="/generate", status="200") == 2
    assert delta(req, method="POST", route="/v1/chat/completions", status="200") == 1
    assert delta(req, method="POST", route="/v1/completions", status="200") == 1
    # route templates, never raw paths
    assert delta(req, method="GET", route="/calibrate/{job_id}", status="404") == 2
    assert delta(req, method="GET", route="unmatched", status="404") == 1
    assert not [k for k in after if k[0] == req and ("route", "/calibrate/abc") in k[1]]
    assert delta("halluwatch_http_request_duration_seconds_count", route="/generate") == 2
    assert value(after, "halluwatch_http_requests_total", method="GET", route="/metrics", status="200") >= 1

    # four finished responses: /generate, /generate stream, chat, completions stream
    risks = [chat.model_extra["risk"], comp[-1].model_extra["risk"]]
    scores = [b["scores"] for b in bodies] + [r["scores"] for r in risks]
    quadrants = [b["quadrant"]["name"] for b in bodies] + [r["quadrant"]["name"] for r in risks]
    tokens = sum(b["usage"]["completion_tokens"] for b in bodies) + chat.usage.completion_tokens + \
        comp[-1].usage.completion_tokens
    assert delta("halluwatch_generated_tokens_total") == tokens
    for q in QUADRANT_LABELS:
        assert delta("halluwatch_responses_total", quadrant=q) == quadrants.count(q)
    assert delta("halluwatch_response_hbar_s_count") == 4
    assert delta("halluwatch_response_pri_count") == 4
    assert delta("halluwatch_response_hbar_s_sum") == pytest.approx(sum(s["hbar_s"] for s in scores))
    assert delta("halluwatch_response_pri_sum") == pytest.approx(sum(s["pri"] for s in scores))
    assert delta("halluwatch_time_to_first_token_seconds_count") == 4
    # params without a risk detector: every response assessed by its quadrant, flagged in Q2
    assert delta("halluwatch_assessed_responses_total") == 4
    assert delta("halluwatch_flagged_responses_total") == quadrants.count("Q2")
    assert delta("halluwatch_out_of_distribution_responses_total") == 0
    assert delta("halluwatch_response_risk_count") == 0
    assert delta("halluwatch_queue_wait_seconds_count") == 4  # every generation waited (maybe ~0 s) for the batch
    assert delta("halluwatch_queue_wait_seconds_sum") >= 0
    rates = [b["timing"]["tokens_per_s"] for b in bodies]  # the two /generate bodies: each its own rate
    assert all(r > 0 for r in rates) and delta("halluwatch_request_decode_tokens_per_second_count") >= len(rates)

    # gauges read at scrape time
    assert value(after, "halluwatch_engine_queue_depth") == 0
    assert value(after, "halluwatch_engine_busy") == 0
    assert value(after, "halluwatch_engine_queue_capacity") == 16  # HALLUWATCH_QUEUE_DEPTH's default
    assert value(after, "halluwatch_engine_batch_size") == 0
    assert value(after, "halluwatch_kv_cache_bytes") == 0  # no batch running
    assert 0 < value(after, "halluwatch_prompt_cache_bytes") <= 512 * 2**20  # the prompts above are kept
    assert value(after, "halluwatch_params_loaded") == 1
    for state in JOB_STATES:
        assert (("halluwatch_calibration_jobs", frozenset({("state", state)})) in after)


def sse_done(text: str) -> dict:
    """The `done` event of a /generate SSE body."""
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        if lines["event"] == "done":
            return json.loads(lines["data"])
    raise AssertionError(text)


def test_each_app_has_its_own_registry(engine, tmp_path_factory):
    a, b = build_app(engine, tmp_path_factory), build_app(engine, tmp_path_factory)
    assert a.state.metrics.registry is not b.state.metrics.registry
    body = {"usage": {"completion_tokens": 3}, "scores": {"hbar_s": 1.5, "pri": 2.0}, "quadrant": None,
            "timing": {"ttft_s": 0.1}}
    assert observe_response(a, body) is body
    text_a = generate_latest(a.state.metrics.registry).decode()
    text_b = generate_latest(b.state.metrics.registry).decode()
    assert "halluwatch_generated_tokens_total 3.0" in text_a
    assert "halluwatch_generated_tokens_total 0.0" in text_b
    assert 'halluwatch_responses_total{quadrant="none"} 1.0' in text_a


def test_observe_response_without_metrics_is_a_no_op():
    from fastapi import FastAPI
    app = FastAPI()
    assert observe_response(app, {"usage": {}}) == {"usage": {}}
    install_metrics(app)
    assert observe_response(app, {"scores": "not a dict"}) == {"scores": "not a dict"}  # never raises


def _assessed(probability: float, in_distribution: bool | None, ratio: float | None, calibration: str) -> dict:
    return {"usage": {"completion_tokens": 2}, "scores": {"hbar_s": 1.0, "pri": 1.0, "probe_distance_ratio": ratio},
            "quadrant": {"name": "Q1", "params": calibration},
            "risk": {"probability": probability, "in_distribution": in_distribution, "calibration": calibration}}


def test_flagged_out_of_distribution_risk_and_drift(engine, tmp_path_factory):
    from app.http.app import create_app
    from app.settings import Settings
    from support.params import write_params

    params_dir = tmp_path_factory.mktemp("params")
    reference = {"risk": [i / 100 for i in range(100)], "probe_distance_ratio": [i / 100 for i in range(100)]}
    write_params(params_dir / "ref.json", engine.lm, drift_reference=reference)
    app = create_app(Settings(home=tmp_path_factory.mktemp("home"), params_dir=params_dir, flag_risk=0.6,
                              drift_min_live=10, queue_depth=5), engine)
    for i in range(10):  # risks 0.05 … 0.95: 4 at or above the cutoff 0.6; 3 outside the probe's range
        observe_response(app, _assessed(0.05 + 0.1 * i, i < 7, 0.2 * i, "ref.json"))
    observe_response(app, {"usage": {}, "scores": {}, "quadrant": None, "risk": None})  # not assessed
    text = generate_latest(app.state.metrics.registry).decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert value(samples, "halluwatch_assessed_responses_total") == 10
    assert value(samples, "halluwatch_flagged_responses_total") == 4
    assert value(samples, "halluwatch_out_of_distribution_responses_total") == 3
    assert value(samples, "halluwatch_response_risk_count") == 10
    assert value(samples, "halluwatch_response_risk_bucket", le="0.5") == 5
    assert value(samples, "halluwatch_responses_total", quadrant="none") == 1
    assert value(samples, "halluwatch_engine_queue_capacity") == 5
    snapshot = app.state.drift.snapshot()["ref.json"]
    for signal in ("risk", "probe_distance_ratio"):
        labels = {"calibration": "ref.json", "signal": signal}
        assert value(samples, "halluwatch_drift_ks", **labels) == pytest.approx(snapshot[signal]["ks"])
        assert value(samples, "halluwatch_drift_psi", **labels) == pytest.approx(snapshot[signal]["psi"])
    assert snapshot["probe_distance_ratio"]["ks"] > snapshot["risk"]["ks"]  # ratios up to 1.8 against ≤ 0.99


def test_drift_gauges_are_absent_until_measured(engine, tmp_path_factory):
    from test_openai import build_app as plain_app  # params without a drift reference

    app = plain_app(engine, tmp_path_factory)
    for _ in range(300):
        observe_response(app, _assessed(0.5, True, 0.5, "p.json"))
    text = generate_latest(app.state.metrics.registry).decode()
    assert "halluwatch_drift_ks{" not in text and "halluwatch_drift_psi{" not in text
    assert "no drift reference" in app.state.drift.snapshot()["p.json"]["risk"]["reason"]
