"""Block outputs captured for calibration, and the probe applied while serving.

1. Captured states are the ones the signals were computed from (Δσ recomputed from them), and the
   batched path captures what the one-at-a-time path does.
2. The engine's probe logit (MLX, during generation or teacher forcing) equals the probe applied
   with numpy to the captured states: serving computes what calibration fitted.
3. Params with a probe load it, checked by SHA-256; a bad checksum is refused with a clear error.
"""

import json

import numpy as np
import pytest

from app.engine import GenerationJob, ScoreJob
from app.calibration.params import ParamsError, find_params, load_params
from app.calibration.probe_files import save_probe
from support.params import params_for
from support.reference import np_unit
from signals.probe import Probe

PROMPTS = ["Context: the river floods in spring.\nQuestion: when?\nProposed Answer: in spring.\n\nIs this "
           "answer faithful to the context? Answer 'Yes' or 'No':", "The capital of France is"]


def _ids(engine, text):
    return engine.lm.tokenizer.encode(text)


def _probe(engine, layer: int = 2, position: str = "last_step", seed: int = 0, limit: float = 1e6) -> Probe:
    rng = np.random.default_rng(seed)
    d = engine.lm.model.args.hidden_size
    return Probe(layer=layer, position=position, mean=rng.normal(size=d), scale=rng.uniform(0.5, 2.0, d),
                 coef=rng.normal(size=d) / np.sqrt(d), intercept=0.3, cv_auroc=0.7, distance_limit=limit)


def test_captured_states_are_the_ones_the_signals_saw(engine):
    records, _ = engine.submit(GenerationJob(_ids(engine, PROMPTS[0]), 8, capture_hidden=True)).wait()
    for r in records:
        assert r.hidden.shape == (engine.lm.n_layers, engine.lm.model.args.hidden_size)
        assert r.hidden.dtype == np.float32
        u = np_unit(r.hidden.astype(np.float64))
        d_sigma = np.sqrt(np.mean(np.sum((u - u.mean(axis=0)) ** 2, axis=-1)))
        assert d_sigma == pytest.approx(r.delta_sigma, rel=1e-4)
    assert "hidden" not in records[0].as_dict() and "probe_logits" not in records[0].as_dict()
    plain, _ = engine.submit(GenerationJob(_ids(engine, PROMPTS[0]), 8)).wait()
    assert plain[0].hidden is None


def test_batched_capture_equals_one_at_a_time(engine):
    prompts = [_ids(engine, p) for p in PROMPTS]
    batched = [h.wait() for h in engine.submit_batch([GenerationJob(p, 6, capture_hidden=True) for p in prompts])]
    for ids, (records, _) in zip(prompts, batched):
        single, _ = engine.submit(GenerationJob(ids, 6, capture_hidden=True)).wait()
        assert [r.token_id for r in records] == [r.token_id for r in single]
        for a, b in zip(records, single):
            np.testing.assert_allclose(a.hidden, b.hidden, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_served_probe_equals_the_probe_on_captured_states(engine, layer):
    probe = _probe(engine, layer)
    ids = _ids(engine, PROMPTS[0])
    records, _ = engine.submit(GenerationJob(ids, 8, probes=(probe,), capture_hidden=True)).wait()
    expected = probe.logit(np.stack([r.hidden for r in records]))
    np.testing.assert_allclose([r.probe_logits[0] for r in records], expected, rtol=1e-5, atol=1e-5)
    states = np.stack([r.hidden for r in records])
    np.testing.assert_allclose([r.probe_distances[0] for r in records], probe.distance(states), rtol=1e-5)
    # teacher forcing the same tokens serves the same probe values (one pass, all positions)
    forced, _ = engine.submit(ScoreJob(ids, [r.token_id for r in records], probes=(probe,))).wait()
    np.testing.assert_allclose([r.probe_logits[0] for r in forced], expected, rtol=1e-4, atol=1e-4)
    without, _ = engine.submit(GenerationJob(ids, 2)).wait()
    assert without[0].probe_logits == ()


def _params_with_probe(tmp_path, engine, probe, **extra):
    sha = save_probe(probe, tmp_path / "p_probe_last_step.npz")
    data = {**params_for(engine.lm), "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0},
            "detectors": {"probe_last_step": {"direction": 1, "file": "p_probe_last_step.npz", "sha256": sha,
                                              "layer": probe.layer, "cv_auroc": 0.7}},
            "ranking": ["probe_last_step"], "risk": {"detector": "probe_last_step", "a": 2.0, "b": -0.5},
            "probe": "last_step", "task": "qa", **extra}
    (tmp_path / "p.json").write_text(json.dumps(data))
    return tmp_path / "p.json"


def test_params_load_their_probe_and_refuse_a_bad_checksum(tmp_path, engine):
    probe = _probe(engine)
    path = _params_with_probe(tmp_path, engine, probe)
    loaded = load_params(path).probe
    np.testing.assert_array_equal(loaded.coef, probe.coef)
    assert loaded.layer == probe.layer and loaded.position == "last_step"

    data = (tmp_path / "p_probe_last_step.npz").read_bytes()
    (tmp_path / "p_probe_last_step.npz").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ParamsError, match=r"p\.json: probe file .*p_probe_last_step\.npz: SHA-256 [0-9a-f]{64} "
                                          r"does not match expected"):
        load_params(path)
    found, skipped = find_params(engine.lm.fingerprint, tmp_path)
    assert found is None and "does not match expected" in skipped[0]["reason"]  # skipped, and said why

    (tmp_path / "p_probe_last_step.npz").unlink()
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(path)


def test_responses_carry_probe_risk_and_risk(tmp_path, engine):
    from fastapi.testclient import TestClient

    from app.http.app import create_app
    from app.settings import Settings

    probe = _probe(engine)
    path = _params_with_probe(tmp_path, engine, probe)
    with TestClient(create_app(Settings(params=path, max_tokens_limit=64), engine)) as client:
        body = client.post("/generate", json={"prompt": PROMPTS[0], "max_tokens": 8, "include_trace": True}).json()
        scored = client.post("/score", json={"prompt": PROMPTS[0], "response": body["text"], "include_trace": True,
                                             "end_with_eos": body["finish_reason"] == "eos"}).json()
        info = client.get("/model").json()
    records, _ = engine.submit(GenerationJob(_ids(engine, PROMPTS[0]), 8, capture_hidden=True)).wait()
    logit = float(probe.logit(records[-1].hidden))
    assert body["scores"]["probe_risk"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)
    assert body["risk"]["detector"] == "probe_last_step" and body["risk"]["task"] == "qa"
    assert body["scores"]["probe_in_distribution"] is True and body["risk"]["in_distribution"] is True
    distance = float(probe.distance(records[-1].hidden))
    assert body["scores"]["probe_distance_ratio"] == pytest.approx(distance / probe.distance_limit, rel=1e-4)
    assert body["risk"]["probability"] == pytest.approx(1 / (1 + np.exp(-(2.0 * logit - 0.5))), abs=1e-5)
    # /score teacher-forces the generated tokens (the text encodes back to them): the same probe
    # logit at the last step, so the same probe_risk and risk as /generate
    assert [t["token_id"] for t in scored["trace"]] == [t["token_id"] for t in body["trace"]]
    assert scored["scores"]["probe_risk"] == pytest.approx(body["scores"]["probe_risk"], abs=1e-4)
    assert scored["risk"]["detector"] == "probe_last_step"
    assert scored["risk"]["probability"] == pytest.approx(body["risk"]["probability"], abs=1e-4)
    assert scored["scores"]["probe_in_distribution"] is body["scores"]["probe_in_distribution"] is True
    assert info["params"]["probe"] == {"position": "last_step", "block": probe.layer + 1}  # 1 = first
    assert info["params"]["risk_detector"] == "probe_last_step"


def test_a_state_outside_the_training_range_is_flagged(tmp_path, engine):
    from fastapi.testclient import TestClient

    from app.http.app import create_app
    from app.settings import Settings

    probe = _probe(engine)
    records, _ = engine.submit(GenerationJob(_ids(engine, PROMPTS[0]), 8, capture_hidden=True)).wait()
    probe.distance_limit = float(probe.distance(records[-1].hidden)) / 2  # this prompt lies outside
    path = _params_with_probe(tmp_path, engine, probe)
    with TestClient(create_app(Settings(params=path, max_tokens_limit=64), engine)) as client:
        body = client.post("/generate", json={"prompt": PROMPTS[0], "max_tokens": 8}).json()
    assert body["scores"]["probe_in_distribution"] is False and body["risk"]["in_distribution"] is False
    assert body["scores"]["probe_distance_ratio"] == pytest.approx(2.0, rel=1e-4)
    assert body["scores"]["probe_risk"] is not None  # still reported, flagged as an extrapolation
