"""The drift reference a calibration stores: out-of-fold risk probabilities and probe distance ratios
(the whole run, with `select_detectors`, is checked in test_calibration_probes.py)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from app.calibration.drift_reference import MAX_VALUES, compact, drift_reference
from signals.probe import fit_probe
from signals.selection import PLATT_C, risk_probability, select_detectors

RISK = {"detector": "probe_prompt_end", "a": 2.0, "b": -0.5, "cv_auroc": 0.9}


def _chosen():
    """A selection result as `select_detectors` returns it, its probe fitted on 40 shifted states."""
    rng = np.random.default_rng(3)
    labels = np.tile([0, 1], 20)
    states = {"prompt_end": rng.normal(size=(40, 2, 8)) + labels[:, None, None]}
    probe, _ = fit_probe(states["prompt_end"], labels, "prompt_end", Cs=(1.0,))
    chosen = {"risk": RISK, "risk_scores": rng.normal(size=40), "probes": {"prompt_end": probe},
              "ranking": ["probe_prompt_end", "hbar", "probe_last_step"]}
    return chosen, states


def test_risk_is_the_platt_scaled_out_of_fold_scores_and_the_ratio_the_served_probes():
    chosen, states = _chosen()
    reference = drift_reference(chosen, states)
    assert reference["risk"] == compact(risk_probability(chosen["risk_scores"], RISK))
    probe = chosen["probes"]["prompt_end"]
    assert reference["probe_distance_ratio"] == compact(probe.distance(states["prompt_end"]) / probe.distance_limit)
    assert sum(r > 1 for r in reference["probe_distance_ratio"]) == 1  # the limit: the 99th percentile of 40


def test_without_states_there_is_no_distance_ratio():
    chosen, _ = _chosen()
    assert set(drift_reference(chosen, None)) == {"risk"}


def test_compact_sorts_rounds_and_caps():
    assert compact([0.3, 0.1234567, 0.2]) == [0.12346, 0.2, 0.3]
    many = compact(np.arange(10 * MAX_VALUES))
    assert len(many) == MAX_VALUES and many[0] == 0 and many[-1] == 10 * MAX_VALUES - 1
    assert many == sorted(many)


@pytest.mark.slow  # two detector selections: about 15 s of CPU each
@pytest.mark.parametrize("groups", [None, np.repeat(["a", "b"], 40)])
def test_the_risk_scores_are_those_the_platt_scaling_was_fitted_on(groups):
    rng = np.random.default_rng(5)
    labels = np.tile([0, 1], 40)
    feats = {"hbar": rng.normal(size=80), "pri": rng.normal(size=80) + labels}
    chosen = select_detectors(feats, labels, None, seed=0, groups=groups)
    platt = LogisticRegression(C=PLATT_C, max_iter=10_000, class_weight=None if groups is None else "balanced")
    platt.fit(chosen["risk_scores"][:, None], labels)
    assert platt.coef_[0, 0] == pytest.approx(chosen["risk"]["a"]) and platt.intercept_[0] == pytest.approx(
        chosen["risk"]["b"])
