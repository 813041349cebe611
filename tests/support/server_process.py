"""`halluwatch serve` in a subprocess (this checkout's code), for tests that kill or multiply servers."""

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from .live_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_until(check, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.1)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def server_process(model, home: Path, **env):
    """Yield (process, base URL) of a server over `model` with HALLUWATCH_HOME=home and HALLUWATCH_<KEY>
    for each of `env`; killed afterwards if it still runs."""
    port = free_port()
    environ = {**os.environ, "HALLUWATCH_HOME": str(home), "PYTHONPATH": str(REPO_ROOT),
               **{f"HALLUWATCH_{k.upper()}": str(v) for k, v in env.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", str(model), "--precision",
                             "native", "--port", str(port)], env=environ, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url) or proc.poll() is not None, 120, "server start")
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        yield proc, url
    finally:
        proc.kill()
        proc.wait(30)
