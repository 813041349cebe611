"""A non-editable install (`pip install .` into a fresh venv), run from another folder, serves the
default model with its shipped params and writes nothing inside its site-packages."""

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest
from support import REPO_ROOT
from support.live_server import free_port


def _files(root: Path) -> set:
    return {p for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_non_editable_install_serves_the_shipped_params(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([venv / "bin" / "python", "-c", purelib],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies (and the embedded model's package) come from this test run's environment,
    # added as a plain path: its editable halluwatch is not on it.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp_path / "src"  # pip builds in the source folder: a copy keeps the checkout untouched
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                                  "build", "reports", "tests", "bench", "docs"))
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(src)],
                   check=True, cwd=tmp_path)
    installed = site / "app" / "__init__.py"
    assert installed.is_file()
    before = _files(site)

    port = free_port()
    env = {**os.environ, "HALLUWATCH_HOME": str(tmp_path / "home"), "PYTHONPATH": ""}
    proc = subprocess.Popen([venv / "bin" / "halluwatch", "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the installed server did not start"
            time.sleep(0.5)
        model = httpx.get(f"{url}/model").json()
        assert model["params_source"] == "shipped"
        assert Path(model["params"]["path"]).is_relative_to(site / "calibrated_params")
        assert model["params"]["probe"] is not None
        body = httpx.post(f"{url}/generate", json={"prompt": "What is the capital of France?", "chat_template": True,
                                                   "max_tokens": 8}, timeout=120).json()
        assert "Paris" in body["text"] and body["risk"]["detector"] == model["params"]["risk_detector"]
    finally:
        proc.terminate()
        proc.wait(30)
    assert _files(site) == before, "the installed service wrote inside site-packages"
    assert (tmp_path / "home").is_dir()
