"""Serving leaves the fitting libraries unloaded (signals/lazy.py): a fresh process serving the
embedded model with its shipped calibration assesses a chat answer and a /score without importing
scikit-learn or SciPy; the fitting code still imports them, on first use."""

import json
import subprocess
import sys

import pytest
from support import REPO_ROOT

SCRIPT = r"""
import json, sys
import adapters  # noqa: F401  (OpenBLAS before mlx)
from fastapi.testclient import TestClient
from app.engine import Engine
from app.http.app import create_app
from app.settings import Settings

def loaded():
    return sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy")})

engine = Engine("default", precision="auto")
engine.start()
out = {}
try:
    with TestClient(create_app(Settings(home=sys.argv[1]), engine)) as c:
        chat = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
        out["risk"] = c.post("/generate", json={**chat, "max_tokens": 6}).json()["risk"]
        out["score"] = c.post("/score", json={**chat, "response": "Paris."}).status_code
        out["after_serving"] = loaded()
        from signals.statistics import detector_metrics
        detector_metrics([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], n_boot=10, seed=0)
        out["after_fitting"] = loaded()
finally:
    engine.stop()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_serving_the_default_model_does_not_import_scikit_learn(tmp_path):
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "home")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["risk"] is not None and 0.0 <= out["risk"]["probability"] <= 1.0, out
    assert out["score"] == 200
    assert out["after_serving"] == [], out
    assert "sklearn" in out["after_fitting"], out
