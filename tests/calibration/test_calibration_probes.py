"""Calibration with every detector on a tiny model: states saved, probes fitted and checksummed,
the selection stored in the params, served equal to calibration, and evaluated on the test split."""

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss
from fastapi.testclient import TestClient

from app.calibration.runs import calibrate, evaluate, states_by_position
from app.calibration.scoring import RunSpec, checkpoint_path, load_states, read_checkpoint, score_all, states_dir
from app.calibration.halueval import load_samples
from app.calibration.params import load_params
from app.calibration.probe_files import load_probe
from app.http.app import create_app
from app.settings import Settings
from support.qa_data import write_qa
from signals import detectors, selection
from signals.probe import POSITIONS, STATE_ROWS, sigmoid

N, MAX_TOKENS = 24, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_qa(tmp_path_factory.mktemp("data") / "qa.jsonl", 40, hallucinated="The city {i} burned in {i}.")


def _spec(dataset, **kw):
    return RunSpec(**{"model_ref": "tiny", "task": "qa", "n": N, "max_tokens": MAX_TOKENS, "dataset": str(dataset),
                      "n_boot": 50, **kw})


@pytest.fixture(scope="module")
def calibrated(engine, dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    path = calibrate(engine, _spec(dataset, batch_size=4), root / "params", root / "reports")
    return path, root


def test_params_hold_the_ranked_detectors_and_checksummed_probes(engine, calibrated):
    path, root = calibrated
    params = json.loads(path.read_text())
    names = set(detectors.REGISTRY)
    assert set(params["ranking"]) == names == set(params["detectors"])
    cv = [params["detectors"][n]["cv_auroc"] for n in params["ranking"]]
    assert cv == sorted(cv, reverse=True)
    assert params["risk"]["detector"] == selection.one_se_choice(
        params["ranking"], params["detectors"], {n: d["cv_auroc_folds"] for n, d in params["detectors"].items()})
    assert params["probe"] in POSITIONS  # the best-ranked probe is served
    assert min(params["ranking"].index(f"probe_{p}") for p in POSITIONS) == params["ranking"].index(
        f"probe_{params['probe']}")
    for position in POSITIONS:
        entry = params["detectors"][f"probe_{position}"]
        assert (path.parent / entry["file"]).is_file() and len(entry["sha256"]) == 64
        assert len(entry["layer_cv_auroc"]) == engine.lm.n_layers
    # states of every training sample: (prompt end, last step, answer mean, answer mean square; L blocks, D)
    ckpt = checkpoint_path(root / "reports", engine.lm, _spec(None), "train")
    files = sorted(states_dir(ckpt).glob("*.npy"))
    assert len(files) == N
    states = np.load(files[0])
    assert states.shape == (len(STATE_ROWS), engine.lm.n_layers, engine.lm.model.args.hidden_size)
    assert np.all(states[3] >= states[2] ** 2 - 1e-5)  # a mean square is at least the squared mean
    assert not params["scores_file"].startswith("/")


def _serving(path, position: str, folder, risk_detector: str | None = None):
    """A copy of the params at `path` that serves their probe at `position` (probe files beside it),
    and `risk` from `risk_detector` when given."""
    data = json.loads(path.read_text())
    if risk_detector is not None:
        data["risk"] = {**data["risk"], "detector": risk_detector}
    for entry in data["detectors"].values():
        if "file" in entry:
            (folder / entry["file"]).write_bytes((path.parent / entry["file"]).read_bytes())
    copy = folder / path.name
    copy.write_text(json.dumps({**data, "probe": position}))
    return copy


@pytest.mark.parametrize("position, risk_detector", [*((p, None) for p in POSITIONS),
                                                     ("answer_mean", "scores_probe_model")])
def test_serving_equals_calibration_on_the_same_sample(engine, calibrated, dataset, position, risk_detector, tmp_path):
    path, root = calibrated
    path = _serving(path, position, tmp_path, risk_detector)
    params = load_params(path)
    samples, _ = load_samples("qa", "train", N, 42, dataset)
    ckpt = checkpoint_path(root / "reports", engine.lm, _spec(None), "train")
    records = read_checkpoint(ckpt)
    with TestClient(create_app(Settings(params=path, max_tokens_limit=64), engine)) as client:
        for sample in samples[:4]:
            body = client.post("/generate", json={"prompt": sample.prompt, "max_tokens": MAX_TOKENS}).json()
            rec = records[sample.key]
            states = states_by_position(np.load(states_dir(ckpt) / (sample.key.replace(":", "_") + ".npy"))[None])
            logit = params.probe.logit(states[position])[0]
            assert body["scores"]["probe_risk"] == pytest.approx(float(sigmoid(logit)), abs=1e-5)
            ranged = params.range_probe  # the range is read at the prompt's end, whichever probe is served
            assert ranged.position == "prompt_end"
            distance = ranged.distance_in(states)[0]
            assert body["scores"]["probe_in_distribution"] == bool(distance <= ranged.distance_limit)
            feats = {**detectors.features(rec, rec["verdict"]), f"probe_{params.probe.position}": float(logit)}
            name = params.data["risk"]["detector"]
            assert name == (risk_detector or name)
            score = selection.detector_score(name, feats, params.data["detectors"], params.data["joint_model_weights"])
            inside = body["scores"]["probe_in_distribution"]  # the calibration's range, whichever detector
            probability = float(selection.risk_probability(score, params.data["risk"]))
            assert body["risk"] == {"detector": name, "task": "qa", "in_distribution": inside,
                                    "probability": pytest.approx(probability, abs=1e-5),
                                    "calibration": path.name}
            assert body["scores"]["probe_distance_ratio"] == pytest.approx(distance / ranged.distance_limit, rel=1e-4)


def test_params_hold_the_drift_reference_of_the_training_split(engine, calibrated):
    path, root = calibrated
    params = load_params(path)
    reference = params.data["drift_reference"]
    ckpt = checkpoint_path(root / "reports", engine.lm, _spec(None), "train")
    records = list(read_checkpoint(ckpt).values())
    labels = np.array([r["label"] for r in records])
    assert len(reference["risk"]) == len(records) == N and reference["risk"] == sorted(reference["risk"])
    # out-of-fold scores, Platt-scaled on themselves: the probabilities average to the base rate
    assert np.mean(reference["risk"]) == pytest.approx(labels.mean(), abs=0.01)
    ratios = params.probe.distance_in(states_by_position(load_states(ckpt, records))) / params.probe.distance_limit
    assert reference["probe_distance_ratio"] == pytest.approx(sorted(ratios), abs=1e-5)
    assert np.mean(np.array(ratios) <= 1) >= 0.95  # the limit is the 99th percentile of these distances


def test_evaluate_reports_every_detector_and_the_layer_curves(engine, calibrated, dataset):
    path, root = calibrated
    report = evaluate(engine, path, _spec(dataset, batch_size=4), root / "reports", root / "reports")
    body = json.loads(report.read_text())
    metrics = body["metrics"]
    params = json.loads(path.read_text())
    assert list(metrics["all_detectors"]) == params["ranking"]
    for d in metrics["all_detectors"].values():
        assert d["auroc_ci"][0] <= d["auroc"] <= d["auroc_ci"][1]
    # recompute the risk's Brier score and the probes' in-distribution shares from the stored test
    # scores and states: the params' probes on the saved block outputs, the selected detector's
    # score, its Platt probability
    test_samples, _ = load_samples("qa", "test", N, 42, dataset)
    ckpt = checkpoint_path(root / "reports", engine.lm, _spec(None), "test")
    stored = read_checkpoint(ckpt)
    records = [stored[s.key] for s in test_samples]
    labels = np.array([r["label"] for r in records])
    assert labels.sum() == N // 2
    states = states_by_position(load_states(ckpt, records))
    rows = [detectors.features(r, r["verdict"]) for r in records]
    feats = {name: np.array([row[name] for row in rows]) for name in rows[0]}
    inside = {}
    for position in POSITIONS:
        entry = params["detectors"][f"probe_{position}"]
        probe = load_probe(path.parent / entry["file"], entry["sha256"])
        feats[f"probe_{position}"] = probe.logit(states[position])
        inside[position] = float(np.mean(probe.distance_in(states) <= probe.distance_limit))
    risk = params["risk"]
    score = selection.detector_score(risk["detector"], feats, params["detectors"], params["joint_model_weights"])
    platt = 1 / (1 + np.exp(-(risk["a"] * score + risk["b"])))
    assert metrics["risk"]["detector"] == risk["detector"]
    assert metrics["risk"]["brier"] == pytest.approx(brier_score_loss(labels, platt), abs=1e-9)
    assert metrics["risk"]["brier_base_rate"] == pytest.approx(0.25)  # balanced test split
    length = metrics["answer_length"]  # "The city {i} burned in {i}." is longer than "The river {i} flooded."
    assert length["direction"] == 1 and length["auroc"] == 1.0 and length["same_length_pairs"] == 0
    assert all(d["auroc_same_length"] is None for d in metrics["all_detectors"].values())
    for position in POSITIONS:
        curve = metrics["probe_layers"][position]
        assert len(curve["test_auroc"]) == len(curve["train_cv_auroc"]) == engine.lm.n_layers
        assert curve["in_distribution"] == pytest.approx(inside[position], abs=1e-12)
    assert any(name.endswith("_probe_layers.png") for name in body["figures"])
    text = report.with_suffix(".md").read_text()
    assert "## Every detector" in text and "probe_prompt_end" in text and "Goal (selected detector" in text


def test_missing_or_older_states_are_computed_again_from_the_recorded_answer(engine, dataset, tmp_path):
    samples, _ = load_samples("qa", "train", 12, 42, dataset)
    ckpt = tmp_path / "c.jsonl"
    first = score_all(engine, samples, _spec(dataset, n=12), ckpt)
    files = [states_dir(ckpt) / (s.key.replace(":", "_") + ".npy") for s in samples]
    kept = [np.load(f) for f in files]
    files[3].unlink()
    np.save(files[5], kept[5][:2])  # the older layout: prompt end and last step only
    seen = []
    again = score_all(engine, samples, _spec(dataset, n=12), ckpt, progress=lambda done, total: seen.append(total))
    assert again == first  # the records stay; only the two samples' states are made again
    assert seen[-1] == 14
    for i in (3, 5):  # teacher forcing the recorded answer gives the states generation saved
        np.testing.assert_allclose(np.load(files[i]), kept[i], rtol=1e-4, atol=1e-4)


def test_without_probes_nothing_is_captured_and_the_selection_still_runs(engine, dataset, tmp_path):
    path = calibrate(engine, _spec(dataset, probes=False), tmp_path / "params", tmp_path / "reports")
    params = json.loads(path.read_text())
    assert params["probe"] is None and not any(n.startswith("probe_") for n in params["ranking"])
    assert set(params["drift_reference"]) == {"risk"}  # no probe, no distance ratio
    assert not list((tmp_path / "reports" / "scores").glob("*_states"))
    assert load_params(path).probe is None


def test_too_few_samples_skip_the_selection_and_say_why(engine, dataset, tmp_path):
    path = calibrate(engine, _spec(dataset, n=12), tmp_path / "params", tmp_path / "reports")
    params = json.loads(path.read_text())
    assert "smaller class has 6" in params["selection_skipped"] and "risk" not in params
