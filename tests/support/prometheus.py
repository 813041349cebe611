"""A real Prometheus for the monitoring tests: Debian's `prometheus` package (it brings `promtool`).
In CI (CI=true) a missing binary fails the test; elsewhere the test is skipped."""

import os
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
