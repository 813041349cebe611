"""Which params a server serves: bound to the model's fingerprint, changed only by an explicit
activation, and never written into the code tree."""

import json
import subprocess
import time

import pytest
from fastapi.testclient import TestClient
from support import REPO_ROOT
from support.params import write_params
from support.qa_data import write_qa
from support.tiny_models import make_tiny_model

from app.calibration.runs import calibrate
from app.calibration.scoring import RunSpec, checkpoint_path
from app.cli import main
from app.engine import Engine
from app.http.app import create_app
from app.settings import Settings


def _engine(path):
    e = Engine(str(path), precision="native")
    e.start()
    return e


def _spec(dataset, n=20):
    return RunSpec(model_ref="tiny", task="qa", n=n, max_tokens=3, dataset=str(dataset), batch_size=4, probes=False)


@pytest.mark.slow
def test_params_of_another_model_with_the_same_folder_name_are_skipped(tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", 20)
    first = _engine(make_tiny_model("llama", tmp_path / "a" / "llama"))
    try:
        params_path = calibrate(first, _spec(data), tmp_path / "params", tmp_path / "reports")
        first_ckpt = checkpoint_path(tmp_path / "reports", first.lm, _spec(data), "train")
    finally:
        first.stop()
    other = _engine(make_tiny_model("llama", tmp_path / "b" / "llama", seed=1, layers=3))
    try:
        assert other.lm.model_id == first.lm.model_id == "llama"  # the same name, another model
        settings = Settings(home=tmp_path / "home", params_dir=tmp_path / "params")
        with TestClient(create_app(settings, other)) as c:
            model = c.get("/model").json()
            assert model["params"] is None and model["params_source"] is None
            (skipped,) = model["params_skipped"]
            assert skipped["path"] == str(params_path) and "blocks 4 ≠ 3" in skipped["reason"]
            r = c.post("/generate", json={"prompt": "hello", "max_tokens": 3})
            assert r.status_code == 200 and r.json()["quadrant"] is None
        # its calibration scores every sample itself: the other model's checkpoint is not reused
        done_at_start = []
        calibrate(other, _spec(data), tmp_path / "params2", tmp_path / "reports",
                  progress=lambda done, total: done_at_start.append(done))
        assert done_at_start[0] == 0
        assert checkpoint_path(tmp_path / "reports", other.lm, _spec(data), "train") != first_ckpt
    finally:
        other.stop()


def _tracked_changes() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True).stdout


def _calibrate(client, activate: bool) -> str:
    r = client.post("/calibrate", json={"n": 20, "max_tokens": 3, "dataset": "qa.jsonl", "activate": activate,
                                        "batch_size": 4, "probes": False})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    while (job := client.get(f"/calibrate/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(0.05)  # polling a job that ends by itself
    assert job["status"] == "succeeded", job
    return job["result"]["params_path"]


@pytest.mark.slow
def test_only_an_activation_changes_what_is_served_across_restarts(engine, tmp_path, monkeypatch):
    shipped = write_params(tmp_path / "shipped" / "p.json", engine.lm)
    (tmp_path / "home" / "data").mkdir(parents=True)
    write_qa(tmp_path / "home" / "data" / "qa.jsonl", 20)
    settings = Settings(home=tmp_path / "home", params_dir=tmp_path / "shipped")
    before = _tracked_changes()

    def served() -> dict:  # a restart: a new app over the same folders
        with TestClient(create_app(settings, engine)) as c:
            model = c.get("/model").json()
        return {"path": model["params"]["path"], "source": model["params_source"]}

    with TestClient(create_app(settings, engine)) as c:
        written = _calibrate(c, activate=False)
        assert c.get("/model").json()["params"]["path"] == str(shipped)
    assert written.startswith(str(settings.calibrations_dir))
    assert served() == {"path": str(shipped), "source": "shipped"}
    assert _tracked_changes() == before and json.loads(shipped.read_text())["source"] == "test"

    with TestClient(create_app(settings, engine)) as c:
        activated = _calibrate(c, activate=True)
        assert c.get("/model").json()["params"]["path"] == activated  # at once
    assert served() == {"path": activated, "source": "active"}  # and after a restart

    monkeypatch.setenv("HALLUWATCH_HOME", str(settings.home))  # the operator switches back by hand
    main(["activate", written])
    assert served() == {"path": written, "source": "active"}
    assert _tracked_changes() == before


def test_params_flag_of_another_model_is_refused_at_start(engine, tmp_path):
    path = write_params(tmp_path / "p.json", engine.lm,
                        model_fingerprint={**engine.lm.fingerprint.as_dict(), "hidden_size": 999})
    with pytest.raises(Exception, match="hidden_size 999 ≠"):
        create_app(Settings(home=tmp_path, params=path), engine)
