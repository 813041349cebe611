"""Several calibrations of one model: each request is assessed by the calibration whose probe finds
its prompt closest to its training prompts, or by the one it names."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support.params import params_for

from app.calibration.probe_files import save_probe
from app.engine import GenerationJob
from app.http.app import create_app
from app.settings import Settings
from signals.probe import Probe

PROMPT = "The capital of France is"
LAYER = 1


def _state(engine, text: str) -> np.ndarray:
    """The prompt-end output of block LAYER for `text` (what a prompt_end probe reads)."""
    records, _ = engine.submit(GenerationJob(engine.lm.tokenizer.encode(text), 1, capture_hidden=True)).wait()
    return records[0].hidden[LAYER]


def _write(folder, engine, name: str, task: str, created: str, centre: np.ndarray, intercept: float):
    """Params of task `task` whose prompt_end probe's training states centre on `centre` (limit 1.5)."""
    d = centre.size
    probe = Probe(layer=LAYER, position="prompt_end", mean=centre, scale=np.ones(d), coef=np.zeros(d),
                  intercept=intercept, cv_auroc=0.8, distance_limit=1.5)
    sha = save_probe(probe, folder / f"{name}_probe_prompt_end.npz")
    data = {**params_for(engine.lm, task=task, created_utc=created),
            "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0},
            "detectors": {"probe_prompt_end": {"direction": 1, "file": f"{name}_probe_prompt_end.npz",
                                               "sha256": sha, "layer": LAYER, "cv_auroc": 0.8}},
            "ranking": ["probe_prompt_end"], "risk": {"detector": "probe_prompt_end", "a": 1.0, "b": 0.0},
            "probe": "prompt_end"}
    (folder / f"{name}.json").write_text(json.dumps(data))


@pytest.fixture
def client(engine, tmp_path):
    near = _state(engine, PROMPT)
    far = near + 50.0  # 50 standard deviations away in every coordinate
    # the newest (the default) is the one far from PROMPT: routing, not recency, must pick
    _write(tmp_path, engine, "chat", "answers", "2026-02-01T00:00:00Z", far, intercept=3.0)
    _write(tmp_path, engine, "judge", "qa", "2026-01-01T00:00:00Z", near, intercept=-3.0)
    with TestClient(create_app(Settings(home=tmp_path / "home", params_dir=tmp_path), engine)) as c:
        yield c


def test_the_closest_calibration_assesses_the_request(client):
    model = client.get("/model").json()
    assert [c["task"] for c in model["calibrations"]] == ["answers", "qa"] and model["params"]["task"] == "answers"
    body = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 3}).json()
    assert body["risk"]["calibration"] == "judge.json" and body["risk"]["task"] == "qa"
    assert body["risk"]["in_distribution"] is True and body["quadrant"]["params"] == "judge.json"
    assert body["risk"]["probability"] == pytest.approx(1 / (1 + np.exp(3.0)), rel=1e-4)  # its own probe's logit
    scored = client.post("/score", json={"prompt": PROMPT, "response": "Paris."}).json()
    assert scored["risk"]["calibration"] == "judge.json"


def test_a_named_calibration_is_used_even_when_farther(client):
    body = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 3, "calibration": "answers"}).json()
    assert body["risk"]["calibration"] == "chat.json" and body["risk"]["in_distribution"] is False
    assert body["risk"]["probability"] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-4)
    v1 = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "calibration": "chat.json"}).json()
    assert v1["risk"]["risk"]["calibration"] == "chat.json"


def test_an_unknown_calibration_is_refused_naming_the_field(client):
    r = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 3, "calibration": "nope"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "calibration"]
    assert "answers (chat.json)" in r.text and "qa (judge.json)" in r.text
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "calibration": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "calibration"


def test_the_range_probe_routes_and_the_served_probe_gives_the_risk(engine, tmp_path):
    """A calibration whose risk reads an answer-mean probe is in range by its prompt-end probe: here
    its answer-mean states would take any request (a huge limit), its prompts lie far away, so the
    request goes to the other calibration; named, it gives the answer-mean probe's risk, out of range."""
    near = _state(engine, PROMPT)
    _write(tmp_path, engine, "judge", "qa", "2026-01-01T00:00:00Z", near, intercept=-3.0)
    d = near.size
    probes = {"answer_mean": Probe(layer=LAYER, position="answer_mean", mean=near, scale=np.ones(d), coef=np.zeros(d),
                                   intercept=2.0, cv_auroc=0.8, distance_limit=1e9),
              "prompt_end": Probe(layer=LAYER, position="prompt_end", mean=near + 50.0, scale=np.ones(d),
                                  coef=np.zeros(d), intercept=0.0, cv_auroc=0.8, distance_limit=1.5)}
    entries = {f"probe_{p}": {"direction": 1, "file": f"chat_{p}.npz", "layer": LAYER, "cv_auroc": 0.8,
                              "sha256": save_probe(probe, tmp_path / f"chat_{p}.npz")} for p, probe in probes.items()}
    data = {**params_for(engine.lm, task="answers", created_utc="2026-02-01T00:00:00Z"),
            "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0}, "detectors": entries,
            "ranking": list(entries), "risk": {"detector": "probe_answer_mean", "a": 1.0, "b": 0.0},
            "probe": "answer_mean", "range_probe": "prompt_end"}
    (tmp_path / "chat.json").write_text(json.dumps(data))
    with TestClient(create_app(Settings(home=tmp_path / "home", params_dir=tmp_path), engine)) as client:
        chat = client.get("/model").json()["calibrations"][0]
        assert chat["probe"]["position"] == "answer_mean" and chat["range_probe"]["position"] == "prompt_end"
        body = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 3}).json()
        assert body["risk"]["calibration"] == "judge.json"
        named = client.post("/generate", json={"prompt": PROMPT, "max_tokens": 3, "calibration": "answers"}).json()
        assert named["risk"]["calibration"] == "chat.json" and named["risk"]["in_distribution"] is False
        assert named["risk"]["probability"] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-4)
        assert named["scores"]["probe_risk"] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-4)
        assert named["scores"]["probe_distance_ratio"] > 10  # the prompt-end distance, not the answer mean's
