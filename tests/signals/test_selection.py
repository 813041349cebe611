"""Detector selection: CV ranking on train only, probes inside the CV, Platt-scaled risk, held-out check."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from signals.detectors import FEATURES, LinearProbe, ScoresModel, ScoresProbeModel, features
from signals.selection import (detector_score, detector_scores, evaluate_detectors, risk_probability, select_detectors,
                               one_se_choice, range_probe, served_probe, source_folds, too_few)

N = 120


def _data(seed: int = 0, planted_layer: int | None = 2, strength: float = 1.5):
    """Features with one informative baseline (`entropy_max`, lower when hallucinated), and states of
    3 blocks × 16 dims, a linear signal planted in one block at the prompt end."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], N // 2)
    feats = {"hbar": rng.normal(size=N), "pri": rng.normal(size=N), "entropy_max": rng.normal(size=N) - 0.8 * labels,
             "verdict_p_no": rng.uniform(size=N)}
    states = {"prompt_end": rng.normal(size=(N, 3, 16)), "last_step": rng.normal(size=(N, 3, 16))}
    if planted_layer is not None:
        direction = rng.normal(size=16)
        direction /= np.linalg.norm(direction)
        states["prompt_end"][:, planted_layer, :] += 2 * strength * np.outer(labels - 0.5, direction)
    return feats, labels, states


def test_a_planted_probe_wins_and_its_layer_is_found():
    feats, labels, states = _data()
    chosen = select_detectors(feats, labels, states, seed=42)
    assert chosen["ranking"][0] == "probe_prompt_end"
    entry = chosen["detectors"]["probe_prompt_end"]
    assert entry["layer"] == 2 and entry["cv_auroc"] > 0.9 and len(entry["cv_auroc_folds"]) == 5
    assert chosen["probes"]["prompt_end"].layer == 2
    assert chosen["risk"]["detector"] == "probe_prompt_end" and chosen["risk"]["a"] > 0
    # noise detectors sit near chance in CV; the informative baseline is oriented "lower flags"
    assert abs(chosen["detectors"]["verdict_p_no"]["cv_auroc"] - 0.5) < 0.15
    assert chosen["detectors"]["entropy_max"]["direction"] == -1
    assert chosen["detectors"]["entropy_max"]["cv_auroc"] > 0.65
    # the protocol's directions are kept for the seed signals
    assert chosen["detectors"]["hbar"]["direction"] == -1 and chosen["detectors"]["pri"]["direction"] == 1
    assert set(chosen["ranking"]) == {"hbar", "pri", "entropy_max", "verdict_p_no", "joint", "probe_prompt_end",
                                      "probe_last_step"}


def test_without_states_the_best_single_feature_wins_and_risk_is_calibrated():
    feats, labels, _ = _data()
    chosen = select_detectors(feats, labels, None, seed=42)
    assert "probe_prompt_end" not in chosen["detectors"] and chosen["probes"] == {}
    assert chosen["risk"]["detector"] == "entropy_max"
    params = {**chosen, "joint_model_weights": {"w_hbar": 0.0, "w_pri": 0.0, "intercept": 0.0}}
    p = risk_probability(detector_score("entropy_max", feats, chosen["detectors"], {}), chosen["risk"])
    assert np.all((p > 0) & (p < 1))
    assert abs(p.mean() - labels.mean()) < 0.05  # Platt scaling matches the base rate on its own data
    assert roc_auc_score(labels, p) == pytest.approx(roc_auc_score(labels, -feats["entropy_max"]))
    risk = evaluate_detectors(detector_scores(feats, params), labels, params, n_boot=50)["risk"]
    assert risk["brier"] < 0.25
    vs = risk["vs_best_single"]  # entropy_max gives the risk here: the best other raw score is a noise one
    assert vs["detector"] in ("hbar", "pri", "verdict_p_no") and vs["ci"][0] > 0
    assert vs["difference"] == pytest.approx(risk["auroc"] - vs["auroc"])


def test_shuffled_labels_leave_the_probe_at_chance():
    feats, labels, states = _data(planted_layer=None)
    labels = np.random.default_rng(1).permutation(labels)
    chosen = select_detectors(feats, labels, states, seed=42)
    for position in ("prompt_end", "last_step"):
        assert 0.35 <= chosen["detectors"][f"probe_{position}"]["cv_auroc"] <= 0.65


def test_held_out_evaluation_keeps_the_training_directions():
    feats, labels, _ = _data()
    chosen = select_detectors(feats, labels, None, seed=42)
    params = {**chosen, "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0}}
    flipped = {**feats, "entropy_max": -feats["entropy_max"]}  # the signal reverses on new data
    result = evaluate_detectors(detector_scores(flipped, params), labels, params, n_boot=50)
    assert result["detectors"]["entropy_max"]["auroc"] < 0.3  # not re-oriented on the test labels
    assert list(result["detectors"]) == [n for n in chosen["ranking"] if not n.startswith("probe_")]
    lo, hi = result["detectors"]["pri"]["auroc_ci"]
    assert lo <= result["detectors"]["pri"]["auroc"] <= hi
    # the joint detector uses the saved weights: here it is PRI exactly
    assert result["detectors"]["joint"]["auroc"] == pytest.approx(result["detectors"]["pri"]["auroc"])


def test_too_few_samples_are_refused_with_the_reason():
    labels = np.tile([0, 1], 9)
    assert "at least 10 samples of each class" in too_few(labels)
    assert too_few(np.tile([0, 1], 10)) is None
    with pytest.raises(ValueError, match="smaller class has 9"):
        select_detectors({"hbar": np.zeros(18), "pri": np.zeros(18)}, labels)


def test_features_read_response_scores_and_the_verdict():
    scores = {"hbar_s": 1.0, "pri": 2.0, "surprise_mean": 3.0, "surprise_max": 4.0, "entropy_mean": 5.0,
              "entropy_max": 6.0, "prob_min": 0.1, "pfail_max": 0.5}
    got = features(scores, {"p_yes": 0.2, "p_no": 0.7})
    assert got == {"hbar": 1.0, "pri": 2.0, "surprise_mean": 3.0, "surprise_max": 4.0, "entropy_mean": 5.0,
                   "entropy_max": 6.0, "prob_min": 0.1, "verdict_p_no": 0.7, "verdict_p_yes": 0.2}


def _sources(seed: int = 0):
    """Two sources of 160 samples: in `hard` 80% of answers are wrong, in `easy` 20%. Feature
    `source_only` tells the sources apart and nothing else; `within` ranks answers inside each
    source (weakly) and carries no trace of the source."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["hard", "easy"], 160)
    labels = np.concatenate([rng.random(160) < 0.8, rng.random(160) < 0.2]).astype(int)
    feats = {"hbar": rng.normal(size=320), "pri": rng.normal(size=320),
             "entropy_max": (groups == "hard") + 0.05 * rng.normal(size=320),  # the source, nothing else
             "surprise_max": rng.normal(size=320) + 1.2 * labels}
    return feats, labels, groups


def test_sources_are_left_out_in_turn_when_each_can_be():
    feats, labels, groups = _sources()
    folds = source_folds(labels, groups)
    assert [sorted(set(groups[test])) for _, test in folds] == [["easy"], ["hard"]]
    assert all(set(groups[train]).isdisjoint(groups[test]) for train, test in folds)
    assert source_folds(labels, None) is None and source_folds(labels, np.repeat("one", 320)) is None
    one_class = labels.copy()
    one_class[groups == "easy"] = 1  # a source holding one class cannot be scored by AUROC
    assert source_folds(one_class, groups) is None


def test_with_sources_the_selection_ranks_by_transfer_to_the_left_out_source():
    feats, labels, groups = _sources()
    pooled = select_detectors(feats, labels, None, seed=42)
    by_source = select_detectors(feats, labels, None, seed=42, groups=groups)
    assert pooled["risk"]["selected_by"] == "CV AUROC" and pooled["risk"]["prior"] == pytest.approx(labels.mean())
    assert by_source["risk"]["selected_by"] == "leave-one-source-out AUROC" and by_source["risk"]["prior"] == 0.5
    # pooled, telling the sources apart looks informative; left out, a source is told apart from nothing
    assert pooled["detectors"]["entropy_max"]["cv_auroc"] > 0.7
    assert by_source["detectors"]["entropy_max"]["cv_auroc"] < 0.6
    assert set(by_source["detectors"]["entropy_max"]["cv_auroc_by_source"]) == {"easy", "hard"}
    assert by_source["risk"]["detector"] == "surprise_max"
    # Platt scaling at an even prior: the risk of the average answer is near one half, not the mixture's share
    p = risk_probability(detector_score("surprise_max", feats, by_source["detectors"], {}), by_source["risk"])
    assert abs(np.mean(p) - 0.5) < 0.1


def test_the_scores_model_combines_every_response_score():
    rng = np.random.default_rng(3)
    labels = np.tile([0, 1], 100)
    names = [f.name for f in FEATURES if f.source == "scores"]
    feats = {name: rng.normal(size=200) for name in names}
    feats["pri"] += 0.8 * labels  # two weak signals, each alone worse than both together
    feats["surprise_mean"] += 0.8 * labels
    model = ScoresModel()
    assert model.available(feats, {}) and not model.available({"pri": feats["pri"]}, {})
    entry = model.fit(feats, labels, {}, seed=42)
    json.dumps(entry)  # stored as it is in the params
    score = model.score(entry, feats)
    assert roc_auc_score(labels, score) > max(roc_auc_score(labels, feats[n]) for n in ("pri", "surprise_mean"))
    weights = dict(zip(entry["inputs"], entry["coef"]))
    assert weights["pri"] > 0 and weights["surprise_mean"] > 0
    one = {name: float(v[7]) for name, v in feats.items()}  # one response at serving time: plain floats
    assert float(model.score(entry, one)) == pytest.approx(score[7])


def test_a_pooled_model_within_one_standard_error_of_the_best_gives_the_risk():
    folds = {"surprise_max": [0.70, 0.52, 0.76], "scores_model": [0.70, 0.53, 0.70], "probe_prompt_end": [0.5] * 3}
    detectors = {name: {"cv_auroc": float(np.mean(f))} for name, f in folds.items()}
    ranking = sorted(folds, key=lambda n: -detectors[n]["cv_auroc"])
    assert ranking[0] == "surprise_max" and one_se_choice(ranking, detectors, folds) == "scores_model"
    with_probe = {**detectors, "scores_probe_model": {"cv_auroc": 0.62}}  # also within one SE: it goes first
    assert one_se_choice(ranking, with_probe, folds) == "scores_probe_model"
    folds["surprise_max"] = [0.80, 0.81, 0.80]  # clearly better than the pooled model: the best one stays
    detectors["surprise_max"]["cv_auroc"] = float(np.mean(folds["surprise_max"]))
    assert one_se_choice(ranking, detectors, folds) == "surprise_max"
    del detectors["scores_model"]  # not available (e.g. a response score missing): the best one
    assert one_se_choice(["surprise_max", "probe_prompt_end"], detectors, folds) == "surprise_max"


def test_the_scores_probe_model_adds_the_answer_mean_probe_to_the_response_scores():
    """A weak signal in the response scores and another in the answer's states: the model on both
    beats each alone; its probe is the answer-mean probe's own fit (so serving reads the saved
    probe file), and its score on new states is the logistic model on their probe logits."""
    rng = np.random.default_rng(5)
    n = 300
    labels = np.tile([0, 1], n // 2)
    groups = np.repeat(["a", "b"], n // 2)
    feats = {f.name: rng.normal(size=n) for f in FEATURES if f.source == "scores"}
    feats["pri"] += 0.7 * labels
    states = {"answer_mean": rng.normal(size=(n, 3, 16))}
    states["answer_mean"][:, 1, 0] += 0.9 * labels
    model = ScoresProbeModel()
    assert model.available(feats, states) and not model.available(feats, {})
    assert model.available({**feats, "probe_answer_mean": np.zeros(n)}, {})  # served: the probe's logit
    entry = model.fit(feats, labels, states, seed=42, groups=groups)
    own = LinearProbe("answer_mean").fit(feats, labels, states, seed=42, groups=groups)["probe"]
    fitted = entry.pop("input_probe")
    assert fitted.layer == own.layer == 1 and np.array_equal(fitted.coef, own.coef)
    json.dumps(entry)
    assert entry["inputs"][-1] == "probe_answer_mean" and entry["coef"][-1] > 0 and entry["coef"][1] > 0
    logits = own.logit(states["answer_mean"])
    score = model.score(entry, {**feats, "probe_answer_mean": logits})
    assert np.allclose(model.score_fitted({**entry, "input_probe": fitted}, feats, states), score)
    assert roc_auc_score(labels, score) > max(roc_auc_score(labels, feats["pri"]), roc_auc_score(labels, logits))


def test_the_risk_detector_names_the_probe_a_calibration_serves_and_the_prompt_end_one_reads_the_range():
    ranking = ["probe_prompt_end", "scores_probe_model", "probe_answer_mean", "pri"]
    assert served_probe(ranking, "scores_probe_model") == "answer_mean"  # the one `risk` reads
    assert served_probe(ranking, "probe_prompt_end") == "prompt_end"
    assert served_probe(ranking, "probe_answer_mean") == "answer_mean"  # a probe serves itself, ranked first or not
    assert served_probe(ranking, "pri") == "prompt_end"  # else the best-ranked probe
    assert served_probe(["pri", "joint"], "pri") is None
    # the range (and routing) is read at the prompt's end whenever that probe was fitted
    assert range_probe(ranking, "scores_probe_model") == "prompt_end"
    assert range_probe(["probe_answer_mean", "pri"], "probe_answer_mean") == "answer_mean"
    assert range_probe(["pri", "joint"], "pri") is None
