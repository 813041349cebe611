"""docs/monitoring/grafana-dashboard.json: well-formed, and every PromQL expression in it (and in
the alert rules) names only metrics that /metrics of a test server exports, so neither can rot."""

import json

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support.params import DRIFT_CALIBRATION, write_params
from support.prometheus import DASHBOARD, RULES, dashboard_expressions, metric_names

from app.http.app import create_app
from app.settings import Settings

N = 3


@pytest.fixture(scope="module")
def exported(engine, tmp_path_factory) -> set:
    """The sample names /metrics exports once responses were assessed and drift measured."""
    params = write_params(tmp_path_factory.mktemp("params") / "c.json", engine.lm, **DRIFT_CALIBRATION)
    app = create_app(Settings(home=tmp_path_factory.mktemp("home"), params=params, max_tokens_limit=16,
                              drift_min_live=N), engine)
    with TestClient(app) as client:
        for i in range(N):
            assert client.post("/generate", json={"prompt": f"Say {i}", "max_tokens": 3}).status_code == 200
        text = client.get("/metrics").text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_metric_names_are_found_in_promql():
    expr = ('sum by (quadrant) (rate(a_total{job="$job", q=~"x|y(z)"}[$__rate_interval])) / ignoring (quadrant) '
            'group_left sum(rate(a_total[5m])) > 0.5 and on (job) histogram_quantile(0.95, b_bucket) or c')
    assert metric_names(expr) == {"a_total", "b_bucket", "c"}
    assert metric_names("halluwatch_drift_ks > 0.2") == {"halluwatch_drift_ks"}


def test_dashboard_is_well_formed(dashboard):
    assert dashboard["uid"] and dashboard["title"] == "halluwatch"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}" and target["refId"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["job"]["definition"] == "label_values(halluwatch_http_requests_total, job)"


def test_dashboard_covers_the_service(dashboard):
    names = set().union(*map(metric_names, dashboard_expressions(dashboard)))
    for needed in ("halluwatch_http_requests_total", "halluwatch_http_request_duration_seconds_bucket",
                   "halluwatch_flagged_responses_total", "halluwatch_responses_total",
                   "halluwatch_response_risk_bucket", "halluwatch_response_hbar_s_bucket",
                   "halluwatch_response_pri_bucket", "halluwatch_drift_ks", "halluwatch_drift_psi",
                   "halluwatch_out_of_distribution_responses_total", "halluwatch_engine_queue_depth",
                   "halluwatch_engine_queue_capacity", "halluwatch_log_dropped_total"):
        assert needed in names


def test_dashboard_names_only_exported_metrics(dashboard, exported):
    for expr in dashboard_expressions(dashboard):
        assert metric_names(expr) <= exported, expr
    assert "halluwatch_http_requests_total" in exported  # the job variable's query


def test_alert_rules_name_only_exported_metrics(exported):
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) <= exported | {"up"}, rule["alert"]  # up: Prometheus's own
