"""Calibration statistics (signals/calibration.py) against hand-computed cases."""

import json
import math

import numpy as np
import pytest
from threadpoolctl import threadpool_limits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

from signals.statistics import (
    DETECTORS,
    bootstrap_auroc_ci,
    bootstrap_auroc_difference,
    calibrate,
    cohens_d,
    evaluate,
    fit_joint,
    joint_probability,
    quadrant_table,
    threshold_at_recall,
)
from signals.quadrant import Thresholds, quadrant

N_BOOT = 200  # enough for the checks below, keeps the module fast


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """The fits are 2-feature problems: threaded BLAS only adds overhead, 20x on a busy 2-core box."""
    with threadpool_limits(limits=1):
        yield

# Hand case: 5 correct (label 0) then 5 hallucinated (label 1); hallucinations have LOWER ℏₛ.
HAND_HBAR = [3.0, 2.6, 2.9, 2.4, 2.8, 2.5, 2.2, 2.7, 2.3, 2.1]
HAND_PRI = [0.2, 0.5, 0.3, 0.9, 0.4, 0.6, 0.8, 0.4, 1.0, 0.7]
HAND_LABELS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def _synthetic(n=200, seed=0):
    """PRI higher and ℏₛ lower for hallucinations, well separated by PRI."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    pri = 0.5 + 2.0 * labels + rng.normal(0, 0.5, n)
    hbar = 2.6 - 0.3 * labels + rng.normal(0, 0.3, n)
    return hbar, pri, labels


def _assert_plain_json(obj):
    """Only plain Python types (np.float64 subclasses float, so check exact types), no NaN."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str
            _assert_plain_json(v)
    elif isinstance(obj, list):
        for v in obj:
            _assert_plain_json(v)
    else:
        assert type(obj) in (int, float, str, bool, type(None)), (obj, type(obj))
    json.dumps(obj, allow_nan=False)


@pytest.fixture(scope="module")
def synthetic():
    """(hbar, pri, labels, calibrate(...)) on the synthetic data, computed once."""
    hbar, pri, labels = _synthetic()
    return hbar, pri, labels, calibrate(hbar, pri, labels, n_boot=N_BOOT)


# --- threshold_at_recall -----------------------------------------------------------------------

def test_threshold_at_recall_obvious_case():
    # Positives are exactly the two top scores: "score ≥ 0.8" flags both and nothing else.
    assert threshold_at_recall([0.1, 0.2, 0.3, 0.8, 0.9], [0, 0, 0, 1, 1]) == (0.8, 1.0, 1.0)


def test_threshold_at_recall_precision_ties_go_to_higher_threshold():
    scores, labels = [1, 2, 3, 4, 5, 6], [0, 1, 0, 1, 1, 1]
    # threshold: flagged, tp -> precision, recall
    #   1: 6, 4 -> 4/6, 1     2: 5, 4 -> 0.8, 1     3: 4, 3 -> 0.75, 0.75
    #   4: 3, 3 -> 1, 0.75    5: 2, 2 -> 1, 0.5     6: 1, 1 -> 1, 0.25
    assert threshold_at_recall(scores, labels) == (2.0, 0.8, 1.0)  # recall ≥ 0.9 needs recall 1
    # recall ≥ 0.5: thresholds 4 and 5 both have precision 1 -> the higher one, 5
    assert threshold_at_recall(scores, labels, min_recall=0.5) == (5.0, 1.0, 0.5)


# --- cohens_d ----------------------------------------------------------------------------------

def test_cohens_d_tiny_sample():
    # x0 = [1, 2, 3]: mean 2, var 1 (ddof=1); x1 = [4, 6]: mean 5, var 2
    # pooled var = (2·1 + 1·2) / (3 + 2 − 2) = 4/3 -> d = 3 / sqrt(4/3) = 3·sqrt(3)/2 ≈ 2.598
    assert cohens_d([1, 2, 3, 4, 6], [0, 0, 0, 1, 1]) == pytest.approx(3 * math.sqrt(3) / 2, rel=1e-12)
    assert cohens_d([4, 6, 1, 2, 3], [1, 1, 0, 0, 0]) == pytest.approx(3 * math.sqrt(3) / 2, rel=1e-12)


# --- quadrant_table ----------------------------------------------------------------------------

def test_quadrant_table_hand_placed_points_with_ties_on_tau():
    tau_hbar, tau_pri = 2.5, 1.0
    points = [  # (hbar, pri, label) -> quadrant; "on τ" counts as flagged
        (3.0, 0.5, 0),  # Q1: hbar > τh, pri < τp
        (2.6, 0.9, 1),  # Q1
        (2.0, 1.5, 1),  # Q2: both flag
        (2.5, 1.0, 1),  # Q2: both exactly on τ
        (2.5, 2.0, 0),  # Q2: hbar on τ
        (3.0, 1.0, 1),  # Q3: pri on τ, hbar > τh
        (2.7, 1.2, 0),  # Q3
        (2.5, 0.2, 0),  # Q4: hbar on τ, pri < τp
    ]
    hbar, pri, labels = map(list, zip(*points))
    table = quadrant_table(hbar, pri, labels, tau_hbar, tau_pri)
    assert table == {
        "Q1": {"count": 2, "share": 2 / 8, "hallucination_rate": 1 / 2},
        "Q2": {"count": 3, "share": 3 / 8, "hallucination_rate": 2 / 3},
        "Q3": {"count": 2, "share": 2 / 8, "hallucination_rate": 1 / 2},
        "Q4": {"count": 1, "share": 1 / 8, "hallucination_rate": 0.0},
    }
    # agrees with the service's per-response rule
    t = Thresholds(tau_hbar, tau_pri)
    expected = [quadrant(h, p, t) for h, p, _ in points]
    assert expected == ["Q1", "Q1", "Q2", "Q2", "Q2", "Q3", "Q3", "Q4"]
    _assert_plain_json(table)


def test_quadrant_table_empty_quadrant_has_no_rate():
    table = quadrant_table([3.0, 3.0], [0.0, 0.1], [0, 1], tau_hbar=2.0, tau_pri=1.0)
    assert table["Q1"] == {"count": 2, "share": 1.0, "hallucination_rate": 0.5}
    assert table["Q2"] == {"count": 0, "share": 0.0, "hallucination_rate": None}
    _assert_plain_json(table)


# --- calibrate on the hand case ----------------------------------------------------------------

def test_calibrate_hand_case():
    r = calibrate(HAND_HBAR, HAND_PRI, HAND_LABELS, n_boot=N_BOOT)
    # AUROC(pri) = P(pri_1 > pri_0) + ½ P(tie), positives {0.6, 0.8, 0.4, 1.0, 0.7}
    # vs negatives {0.2, 0.5, 0.3, 0.9, 0.4}: 0.6 -> 4, 0.8 -> 4, 0.4 -> 2 + ½ (tie with 0.4),
    # 1.0 -> 5, 0.7 -> 4; total 19.5 / 25 = 0.78
    assert r["auroc_pri"] == pytest.approx(0.78)
    # AUROC(−hbar) = P(hbar_1 < hbar_0), positives {2.5, 2.2, 2.7, 2.3, 2.1}
    # vs negatives {3.0, 2.6, 2.9, 2.4, 2.8}: 2.5 -> 4, 2.2 -> 5, 2.7 -> 3, 2.3 -> 5, 2.1 -> 5;
    # total 22 / 25 = 0.88 (> 0.5: the inversion is handled)
    assert r["auroc_hbar"] == pytest.approx(0.88)
    # Recall ≥ 0.9 of 5 positives means all 5. PRI: the lowest positive is 0.4; pri ≥ 0.4 flags
    # the 5 positives and negatives 0.5, 0.9, 0.4 -> precision 5/8.
    assert r["tau_pri"] == 0.4
    assert r["best_precision_pri"] == pytest.approx(5 / 8)
    # ℏₛ: the highest positive is 2.7; hbar ≤ 2.7 flags the 5 positives and negatives 2.6, 2.4
    # -> precision 5/7.
    assert r["tau_hbar"] == 2.7
    assert r["best_precision_hbar"] == pytest.approx(5 / 7)
    # Quadrants at (2.7, 0.4): Q1 = {3.0/0.2, 2.9/0.3}; Q3 = {2.8/0.4 (pri on τ)};
    # Q2 = the other 7 (incl. 2.7/0.4, both on τ), 5 of them hallucinated; Q4 empty.
    assert r["quadrants"] == {
        "Q1": {"count": 2, "share": 0.2, "hallucination_rate": 0.0},
        "Q2": {"count": 7, "share": 0.7, "hallucination_rate": 5 / 7},
        "Q3": {"count": 1, "share": 0.1, "hallucination_rate": 0.0},
        "Q4": {"count": 0, "share": 0.0, "hallucination_rate": None},
    }
    # means: pri_0 = 2.3/5 = 0.46, pri_1 = 3.5/5 = 0.7; hbar_0 = 13.7/5 = 2.74, hbar_1 = 11.8/5 = 2.36
    assert r["means"]["pri"] == {"0": pytest.approx(0.46), "1": pytest.approx(0.7)}
    assert r["means"]["hbar"] == {"0": pytest.approx(2.74), "1": pytest.approx(2.36)}
    assert r["cohens_d"]["hbar"] < 0 < r["cohens_d"]["pri"]  # d on raw ℏₛ keeps its sign
    assert (r["n"], r["n_hallucinated"]) == (10, 5)
    assert r["corr_hbar_pri"] == pytest.approx(np.corrcoef(HAND_HBAR, HAND_PRI)[0, 1])
    assert set(r["pr_auc"]) == set(r["auroc_ci"]) == set(DETECTORS)
    _assert_plain_json(r)


# --- ℏₛ inversion, joint model -----------------------------------------------------------------

def test_hbar_inversion_rule_flags_low_hbar_hallucinations(synthetic):
    hbar, pri, labels, r = synthetic
    assert r["auroc_hbar"] > 0.5
    assert r["means"]["hbar"]["1"] < r["means"]["hbar"]["0"]
    flagged = hbar <= r["tau_hbar"]
    assert flagged[labels == 1].mean() >= 0.9
    precision = labels[flagged].mean()
    assert precision == pytest.approx(r["best_precision_hbar"], rel=1e-12)


def test_fit_joint_positive_pri_weight_and_cv_auroc():
    hbar, pri, labels = _synthetic()
    j = fit_joint(hbar, pri, labels)
    assert j["w_pri"] > 0
    assert j["cv_auroc"] > 0.9
    _assert_plain_json(j)
    # cv_auroc is the mean fold AUROC at the chosen C (same folds, fresh fit per fold)
    folds = StratifiedKFold(5, shuffle=True, random_state=42)
    fresh = cross_val_score(LogisticRegression(C=j["C"], max_iter=10_000), np.column_stack([hbar, pri]),
                            labels, cv=folds, scoring="roc_auc")
    assert j["cv_auroc"] == pytest.approx(fresh.mean(), abs=1e-3)


def test_calibrate_joint_model(synthetic):
    hbar, pri, labels, r = synthetic
    w = r["joint_model_weights"]
    assert set(w) == {"w_hbar", "w_pri", "intercept"}
    assert w["w_pri"] > 0
    assert r["auroc_joint"] > 0.9 and r["auroc_joint_cv"] > 0.9
    assert r["best_precision_joint"] > 0.5
    prob = joint_probability(hbar, pri, w)
    assert labels[prob >= r["tau_joint"]].mean() == pytest.approx(r["best_precision_joint"], rel=1e-12)


def test_joint_probability_hand_values():
    w = {"w_hbar": 1.0, "w_pri": 2.0, "intercept": -3.0}
    # z = 1 + 2 − 3 = 0 -> 0.5; z = −3 -> 1 / (1 + e³); z = ±2000 -> 0 / 1 without overflow
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = joint_probability([1.0, 0.0, -1000.0, 1000.0], [1.0, 0.0, -500.0, 500.0], w)
    assert p == pytest.approx([0.5, 1 / (1 + math.e ** 3), 0.0, 1.0], rel=1e-12, abs=1e-300)


# --- bootstrap ---------------------------------------------------------------------------------

def test_bootstrap_ci_contains_point_and_is_deterministic():
    hbar, pri, labels = _synthetic(n=60, seed=1)
    score = -hbar
    point = roc_auc_score(labels, score)
    ci = bootstrap_auroc_ci(score, labels, n_boot=N_BOOT, seed=7)
    assert ci[0] <= point <= ci[1] and ci[0] < ci[1]
    assert bootstrap_auroc_ci(score, labels, n_boot=N_BOOT, seed=7) == ci
    assert bootstrap_auroc_ci(score, labels, n_boot=N_BOOT, seed=8) != ci
    _assert_plain_json(ci)


def test_bootstrap_ci_skips_one_class_resamples():
    # 1 positive in 12: ~35% of resamples miss it and must be skipped, not crash roc_auc_score.
    scores = np.arange(12.0)
    labels = np.r_[np.zeros(11, int), 1]
    assert bootstrap_auroc_ci(scores, labels, n_boot=100) == [1.0, 1.0]


def test_paired_difference_ci_is_narrower_than_either_auroc_ci_for_related_scores():
    rng = np.random.default_rng(3)
    labels = np.tile([0, 1], 100)
    base = labels + rng.normal(size=200)
    better, worse = base + 0.5 * labels, base + 0.2 * rng.normal(size=200)
    d = bootstrap_auroc_difference(better, worse, labels, n_boot=N_BOOT, seed=7)
    assert d["difference"] == pytest.approx(roc_auc_score(labels, better) - roc_auc_score(labels, worse))
    lo, hi = d["ci"]
    assert 0 < lo <= d["difference"] <= hi  # paired: the shared noise cancels, the gain shows
    single = bootstrap_auroc_ci(better, labels, n_boot=N_BOOT, seed=7)
    assert hi - lo < single[1] - single[0]
    assert bootstrap_auroc_difference(worse, worse, labels, n_boot=N_BOOT)["ci"] == [0.0, 0.0]
    _assert_plain_json(d)


# --- evaluate ----------------------------------------------------------------------------------

def test_evaluate_on_calibration_data_reproduces_calibration(synthetic):
    hbar, pri, labels, calibrated = synthetic
    params = json.loads(json.dumps(calibrated))  # as read back from a params file
    e = evaluate(hbar, pri, labels, params, n_boot=N_BOOT)
    _assert_plain_json(e)
    assert (e["n"], e["n_hallucinated"]) == (200, 100)
    assert set(e["detectors"]) == set(DETECTORS)
    for det in DETECTORS:
        d = e["detectors"][det]
        at = d["at_calibrated_threshold"]
        assert at["precision"] == pytest.approx(params[f"best_precision_{det}"], rel=1e-12)
        assert d["precision_at_recall_0_9"] == pytest.approx(params[f"best_precision_{det}"], rel=1e-12)
        assert at["recall"] >= 0.9
        assert d["auroc"] == pytest.approx(params[f"auroc_{det}"], rel=1e-12)
        assert d["auroc_ci"] == params["auroc_ci"][det]
        assert d["pr_auc"] == pytest.approx(params["pr_auc"][det], rel=1e-12)
        c = at["confusion"]
        assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == 200 and c["tp"] + c["fn"] == 100
    assert e["detectors"]["hbar"]["at_calibrated_threshold"]["threshold"] == params["tau_hbar"]
    assert e["quadrants"] == params["quadrants"]


def test_evaluate_hand_case_confusion_and_optional_tau_joint():
    params = {"tau_hbar": 2.7, "tau_pri": 0.95,
              "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0}}
    e = evaluate(HAND_HBAR, HAND_PRI, HAND_LABELS, params, n_boot=N_BOOT)
    # hbar ≤ 2.7 flags the 5 positives and negatives 2.6, 2.4 (see test_calibrate_hand_case)
    assert e["detectors"]["hbar"]["at_calibrated_threshold"] == {
        "threshold": 2.7, "precision": 5 / 7, "recall": 1.0,
        "confusion": {"tp": 5, "fp": 2, "tn": 3, "fn": 0},
    }
    # pri ≥ 0.95 flags only 1.0 (positive): precision 1, recall 1/5
    assert e["detectors"]["pri"]["at_calibrated_threshold"] == {
        "threshold": 0.95, "precision": 1.0, "recall": 0.2,
        "confusion": {"tp": 1, "fp": 0, "tn": 5, "fn": 4},
    }
    assert "at_calibrated_threshold" not in e["detectors"]["joint"]  # no tau_joint in params
    # the joint probability is monotone in pri here, so it ranks like pri
    assert e["detectors"]["joint"]["auroc"] == pytest.approx(0.78)
    _assert_plain_json(e)


def test_evaluate_rule_that_flags_nothing_has_no_precision():
    params = {"tau_hbar": 0.0, "tau_pri": 99.0, "tau_joint": 1.5,
              "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0}}
    e = evaluate(HAND_HBAR, HAND_PRI, HAND_LABELS, params, n_boot=N_BOOT)
    for det in DETECTORS:
        at = e["detectors"][det]["at_calibrated_threshold"]
        assert (at["precision"], at["recall"]) == (None, 0.0)
    _assert_plain_json(e)


# --- input errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("hbar,pri,labels,msg", [
    ([1.0] * 10, [1.0] * 10, [0] * 10, "one class"),
    ([1.0] * 10, [1.0] * 10, [1] * 10, "one class"),
    ([1.0] * 9, [1.0] * 9, [0, 1] * 4 + [0], "at least 10"),
    ([1.0] * 10, [1.0] * 11, [0, 1] * 5, "lengths differ"),
    ([1.0] * 10, [1.0] * 10, [0, 2] * 5, "0 .correct. or 1"),
])
def test_bad_inputs_raise(hbar, pri, labels, msg):
    with pytest.raises(ValueError, match=msg):
        calibrate(hbar, pri, labels, n_boot=N_BOOT)
    params = {"tau_hbar": 1.0, "tau_pri": 1.0,
              "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0}}
    with pytest.raises(ValueError, match=msg):
        evaluate(hbar, pri, labels, params, n_boot=N_BOOT)


def test_same_stratum_auroc_counts_only_pairs_within_a_stratum():
    from signals.statistics import same_stratum_auroc

    # stratum "a": the hallucinated sample outscores the correct one; stratum "b": it does not;
    # stratum "c" holds one class only. Across strata the score would separate perfectly.
    scores = [10, 11, 1, 0.5, 20]
    labels = [0, 1, 0, 1, 1]
    strata = ["a", "a", "b", "b", "c"]
    assert same_stratum_auroc(scores, labels, strata) == (0.5, 2)
    assert same_stratum_auroc([1, 1, 2, 3], [0, 1, 0, 1], [1, 1, 2, 2]) == (0.75, 2)  # a tie counts half
    assert same_stratum_auroc([1, 2], [0, 1], [1, 2]) == (None, 0)


def test_too_few_of_a_class_for_the_joint_cv_is_refused():
    from signals.statistics import calibrate

    labels = [0] * 4 + [1] * 26
    with pytest.raises(ValueError, match="smaller class has 4 samples; .* at least 5 of each class [(]0 and 1[)]$"):
        calibrate(np.arange(30.0), np.arange(30.0), labels)
