"""A real Prometheus for the monitoring tests: Debian's `prometheus` package (it brings `promtool`).
In CI (CI=true) a missing binary fails the test; elsewhere the test is skipped."""

import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from support import REPO_ROOT
from support.live_server import free_port

RULES = REPO_ROOT / "docs" / "monitoring" / "alerts.yml"
RULE_TESTS = REPO_ROOT / "docs" / "monitoring" / "alerts_test.yml"


def binary(name: str) -> str:
    """The path of `name` (prometheus or promtool); fails the test in CI without it, else skips it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must install it (see .ci/run)", pytrace=False)
        pytest.skip(message)
    return path


@contextmanager
def running_prometheus(target: str, folder: Path, interval: str = "1s"):
    """Yield the URL of a Prometheus that scrapes `target` (host:port) as job "halluwatch" every
    `interval`, evaluates the alert rules as often, and keeps its data in `folder`; stop it after."""
    config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": "halluwatch", "static_configs": [{"targets": [target]}]}]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen([binary("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                                f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address={address}"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{address}"
        wait_for(lambda: _ready(url, process), 60, f"Prometheus did not start ({folder / 'prometheus.log'})")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(url: str, process: subprocess.Popen) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"Prometheus exited with {process.returncode}")
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(check, timeout_s: float, message: str):
    """Poll `check()` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.25)
    return result


DASHBOARD = REPO_ROOT / "docs" / "monitoring" / "grafana-dashboard.json"
# What the dashboard's variables stand for when its expressions are run outside Grafana.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$job": "halluwatch"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


def dashboard_expressions(dashboard: dict) -> list[str]:
    """The PromQL of every panel target (rows' panels included)."""
    out = []
    for panel in dashboard["panels"]:
        for inner in (panel, *panel.get("panels", [])):
            out += [target["expr"] for target in inner.get("targets", [])]
    return out


def metric_names(expr: str) -> set:
    """The metric names a PromQL expression reads: what remains once strings, label matchers, range
    selectors, label lists (by, without, on, ignoring), functions and keywords are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if match.group() not in PROMQL_KEYWORDS and not expr[match.end():].lstrip().startswith("("):
            names.add(match.group())
    return names
