"""A real Prometheus scrapes a halluwatch test server (tiny model): the series come back through
its HTTP API, the alert rules are loaded and evaluated, and every dashboard expression runs."""

import json

import httpx
import pytest
from support.live_server import live_server
from support.params import DRIFT_CALIBRATION, write_params
from support.prometheus import (DASHBOARD, DASHBOARD_VARIABLES, dashboard_expressions, running_prometheus,
                                wait_for)
from test_alert_rules import EXPECTED

from app.http.app import create_app
from app.monitor.flagging import is_flagged
from app.settings import Settings

N = 5


def query(prom: str, expr: str) -> list:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(prom: str, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    params = write_params(tmp_path_factory.mktemp("params") / "c.json", engine.lm, **DRIFT_CALIBRATION)
    return create_app(Settings(home=tmp_path_factory.mktemp("home"), params=params, max_tokens_limit=16,
                               flag_risk=0.3, drift_min_live=N), engine)


def test_prometheus_reads_the_series_and_loads_the_rules(app, tmp_path):
    with live_server(app) as base, running_prometheus(base.removeprefix("http://"), tmp_path) as prom:
        with httpx.Client(base_url=base, timeout=60) as http:
            bodies = [http.post("/generate", json={"prompt": f"Count to {i}:", "max_tokens": 4}).json()
                      for i in range(N)]
        assert all(b["risk"]["calibration"] == "c.json" for b in bodies)
        wait_for(lambda: scalar(prom, 'halluwatch_assessed_responses_total{job="halluwatch"}') == N, 30,
                 "Prometheus never scraped the responses")
        assert scalar(prom, 'up{job="halluwatch"}') == 1
        assert scalar(prom, 'sum(halluwatch_http_requests_total{route="/generate", status="200"})') == N
        assert scalar(prom, "halluwatch_flagged_responses_total") == sum(is_flagged(b, 0.3) for b in bodies)
        assert scalar(prom, "halluwatch_response_risk_count") == N
        assert scalar(prom, "halluwatch_engine_queue_capacity") == 16
        drift = app.state.drift.snapshot()["c.json"]["risk"]
        assert scalar(prom, 'halluwatch_drift_ks{calibration="c.json", signal="risk"}') == pytest.approx(drift["ks"])
        assert scalar(prom, 'halluwatch_drift_psi{signal="risk"}') == pytest.approx(drift["psi"])
        assert query(prom, 'halluwatch_drift_ks{signal="probe_distance_ratio"}') == []  # no probe: not measured

        def evaluated():
            groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            return rules if rules and all(r["health"] == "ok" for r in rules) else None

        rules = wait_for(evaluated, 30, "the alert rules were not all evaluated without error")
        assert {r["name"] for r in rules} == EXPECTED and {r["type"] for r in rules} == {"alerting"}
        assert next(r for r in rules if r["name"] == "HalluwatchDown")["state"] == "inactive"

        for expr in dashboard_expressions(json.loads(DASHBOARD.read_text())):
            for variable, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(variable, value)
            query(prom, expr)  # valid PromQL that Prometheus evaluates
        by_route = 'sum by (route) (rate(halluwatch_http_requests_total{job="halluwatch"}[1m]))'
        assert wait_for(lambda: query(prom, by_route), 10, "no request rate")
