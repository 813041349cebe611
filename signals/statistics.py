"""Calibration statistics for ℏₛ and PRI (docs/signals.md, "Reference calibration protocol").

Pure numpy / scikit-learn: inputs are 1-D arrays of response scores ``hbar`` (ℏₛ), ``pri`` and
binary ``labels`` (1 = hallucinated); outputs are plain Python values, ready for ``json.dumps``.

Every detector is scored so that higher means more likely hallucinated: ℏₛ is inverted on the
calibration data, so its detector score is ``−hbar`` and its rule is "flag if hbar ≤ tau_hbar";
PRI flags when ``pri ≥ tau_pri``; the joint model flags when its probability is ``≥ tau_joint``.
"""

import numpy as np

from signals import lazy
from signals.probe import sigmoid
from signals.ranking import auroc
from signals.quadrant import Thresholds, quadrant

DETECTORS = ("hbar", "pri", "joint")
MIN_RECALL = 0.9
MIN_SAMPLES = 10
CV_FOLDS = 5  # the joint model's C is chosen by stratified CV
JOINT_CS = tuple(float(c) for c in np.logspace(-4, 4, 9))  # the C grid of the joint model


def threshold_at_recall(scores, labels, min_recall: float = MIN_RECALL) -> tuple[float, float, float]:
    """(threshold, precision, recall) of the most precise rule "score ≥ threshold", recall ≥ min_recall.

    Candidates are the thresholds of ``precision_recall_curve``; ties in precision go to the
    higher threshold.
    """
    precision, recall, thresholds = lazy.precision_recall_curve(labels, scores)
    # The curve's last point (precision 1, recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    candidates = np.flatnonzero(recall >= min_recall)  # never empty: the lowest threshold has recall 1
    best = candidates[precision[candidates] == precision[candidates].max()].max()
    return float(thresholds[best]), float(precision[best]), float(recall[best])


def _bootstrap_ci(statistic, labels, n_boot: int, seed: int, level: float) -> list[float]:
    """Percentile bootstrap CI [lo, hi] of `statistic(indices)` over resamples of the samples;
    resamples holding one class only are skipped."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() != labels[idx].max():
            values.append(statistic(idx))
    if not values:
        raise ValueError("bootstrap: every resample held a single class; need more samples of each class")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_auroc_ci(scores, labels, n_boot: int = 1000, seed: int = 42,
                       level: float = 0.95) -> list[float]:
    """Percentile bootstrap CI [lo, hi] of the AUROC; resamples holding one class only are skipped."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    return _bootstrap_ci(lambda i: auroc(labels[i], scores[i]), labels, n_boot, seed, level)


def bootstrap_auroc_difference(a, b, labels, n_boot: int = 1000, seed: int = 42, level: float = 0.95) -> dict:
    """AUROC(a) − AUROC(b) on the same samples, with the percentile CI of a paired bootstrap (both
    scores on each resample; resamples holding one class only are skipped)."""
    a, b, labels = np.asarray(a, dtype=float), np.asarray(b, dtype=float), np.asarray(labels)

    def difference(i):
        return auroc(labels[i], a[i]) - auroc(labels[i], b[i])

    return {"difference": float(difference(np.arange(len(labels)))),
            "ci": _bootstrap_ci(difference, labels, n_boot, seed, level)}


def cohens_d(x, labels) -> float:
    """Cohen's d: mean of label 1 minus mean of label 0, over the pooled SD (ddof=1)."""
    x, labels = np.asarray(x, dtype=float), np.asarray(labels)
    x1, x0 = x[labels == 1], x[labels == 0]
    n1, n0 = len(x1), len(x0)
    pooled_var = ((n1 - 1) * x1.var(ddof=1) + (n0 - 1) * x0.var(ddof=1)) / (n1 + n0 - 2)
    return float((x1.mean() - x0.mean()) / np.sqrt(pooled_var))


def same_stratum_auroc(scores, labels, strata) -> tuple[float | None, int]:
    """AUROC over (hallucinated, correct) pairs of the same stratum only: the chance that a
    hallucinated sample outscores a correct one with, e.g., an answer of the same length (ties
    count half). Returns (AUROC, or None when no stratum holds both classes; number of pairs)."""
    scores, labels, strata = np.asarray(scores, dtype=float), np.asarray(labels), np.asarray(strata)
    total, pairs = 0.0, 0
    for s in np.unique(strata):
        y, x = labels[strata == s], scores[strata == s]
        n_pairs = int(np.count_nonzero(y == 1)) * int(np.count_nonzero(y == 0))
        if n_pairs:
            total += auroc(y, x) * n_pairs
            pairs += n_pairs
    return (total / pairs if pairs else None), pairs


def quadrant_table(hbar, pri, labels, tau_hbar: float, tau_pri: float) -> dict:
    """Count, share and hallucination rate (None when empty) of each quadrant Q1..Q4."""
    thresholds = Thresholds(tau_hbar=float(tau_hbar), tau_pri=float(tau_pri))
    names = np.array([quadrant(float(h), float(p), thresholds) for h, p in zip(hbar, pri)])
    labels = np.asarray(labels)
    table = {}
    for name in ("Q1", "Q2", "Q3", "Q4"):
        members = labels[names == name]
        table[name] = {
            "count": int(len(members)),
            "share": float(len(members) / len(labels)),
            "hallucination_rate": float(members.mean()) if len(members) else None,
        }
    return table


def fit_joint(hbar, pri, labels, seed: int = 42) -> dict:
    """Logistic regression on raw (hbar, pri), C chosen by 5-fold stratified CV on AUROC.

    AUROC does not change when the weights are scaled, so strong regularisation often ties with
    weak; ties (within 1e-4 of the best mean fold AUROC) go to the largest C, the least shrunk
    weights, which keeps them comparable with the prototype's (fitted at sklearn's default C=1).
    Returns {"w_hbar", "w_pri", "intercept", "C", "cv_auroc"}.
    """
    x = np.column_stack([hbar, pri])
    cv = lazy.StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed)
    cv_auroc = {c: lazy.cross_val_score(lazy.LogisticRegression(C=c, max_iter=10_000), x, labels, cv=cv,
                                        scoring="roc_auc").mean() for c in JOINT_CS}
    best = max(cv_auroc.values())
    c = max(c for c, score in cv_auroc.items() if score >= best - 1e-4)
    model = lazy.LogisticRegression(C=c, max_iter=10_000).fit(x, labels)
    return {
        "w_hbar": float(model.coef_[0, 0]),
        "w_pri": float(model.coef_[0, 1]),
        "intercept": float(model.intercept_[0]),
        "C": float(c),
        "cv_auroc": float(cv_auroc[c]),
    }


def joint_logit(hbar, pri, weights: dict) -> np.ndarray:
    """w_hbar·hbar + w_pri·pri + intercept: the joint model's logit."""
    return (weights["w_hbar"] * np.asarray(hbar, dtype=float) + weights["w_pri"] * np.asarray(pri, dtype=float)
            + weights["intercept"])


def joint_probability(hbar, pri, weights: dict) -> np.ndarray:
    """sigmoid of `joint_logit`, computed without overflow."""
    return sigmoid(joint_logit(hbar, pri, weights))


def calibrate(hbar, pri, labels, seed: int = 42, n_boot: int = 1000) -> dict:
    """Run the reference calibration protocol; returns the params-file keys plus extra statistics.

    Raises ValueError when lengths differ, n < 10, or labels are not both 0 and 1.
    """
    hbar, pri, labels = _check_inputs(hbar, pri, labels)
    joint = fit_joint(hbar, pri, labels, seed=seed)
    weights = {k: joint[k] for k in ("w_hbar", "w_pri", "intercept")}
    metrics = {
        det: detector_metrics(score, labels, n_boot, seed)
        for det, score in _detector_scores(hbar, pri, weights).items()
    }
    tau_hbar = -metrics["hbar"]["threshold"]
    tau_pri = metrics["pri"]["threshold"]
    return {
        "auroc_hbar": metrics["hbar"]["auroc"],
        "auroc_pri": metrics["pri"]["auroc"],
        "auroc_joint": metrics["joint"]["auroc"],
        "auroc_joint_cv": joint["cv_auroc"],
        "joint_C": joint["C"],
        "tau_hbar": tau_hbar,
        "tau_pri": tau_pri,
        "tau_joint": metrics["joint"]["threshold"],
        "joint_model_weights": weights,
        "best_precision_hbar": metrics["hbar"]["precision"],
        "best_precision_pri": metrics["pri"]["precision"],
        "best_precision_joint": metrics["joint"]["precision"],
        "pr_auc": {det: m["pr_auc"] for det, m in metrics.items()},
        "auroc_ci": {det: m["auroc_ci"] for det, m in metrics.items()},
        "cohens_d": {"hbar": cohens_d(hbar, labels), "pri": cohens_d(pri, labels)},
        "means": {
            name: {str(c): float(x[labels == c].mean()) for c in (0, 1)}
            for name, x in (("hbar", hbar), ("pri", pri))
        },
        "corr_hbar_pri": float(np.corrcoef(hbar, pri)[0, 1]),
        "n": int(len(labels)),
        "n_hallucinated": int(labels.sum()),
        "quadrants": quadrant_table(hbar, pri, labels, tau_hbar, tau_pri),
    }


def evaluate(hbar, pri, labels, params: dict, seed: int = 42, n_boot: int = 1000) -> dict:
    """Validate saved params on held-out data: per-detector metrics, calibrated rules, quadrants.

    Same input checks as ``calibrate``. ``params`` needs ``tau_hbar``, ``tau_pri`` and
    ``joint_model_weights``; ``tau_joint`` is optional (without it the joint detector has no
    "at_calibrated_threshold").
    """
    hbar, pri, labels = _check_inputs(hbar, pri, labels)
    # Each rule in its own units, and the same rule on the detector's score scale.
    rules = {"hbar": (params["tau_hbar"], -params["tau_hbar"]), "pri": (params["tau_pri"], params["tau_pri"])}
    if params.get("tau_joint") is not None:
        rules["joint"] = (params["tau_joint"], params["tau_joint"])
    detectors = {}
    for det, score in _detector_scores(hbar, pri, params["joint_model_weights"]).items():
        m = detector_metrics(score, labels, n_boot, seed)
        detectors[det] = {
            "auroc": m["auroc"],
            "auroc_ci": m["auroc_ci"],
            "pr_auc": m["pr_auc"],
            "precision_at_recall_0_9": m["precision"],
        }
        if det in rules:
            threshold, score_threshold = rules[det]
            detectors[det]["at_calibrated_threshold"] = {
                "threshold": float(threshold),
                **_rule_stats(score >= score_threshold, labels),
            }
    return {
        "n": int(len(labels)),
        "n_hallucinated": int(labels.sum()),
        "detectors": detectors,
        "quadrants": quadrant_table(hbar, pri, labels, params["tau_hbar"], params["tau_pri"]),
    }


def _check_inputs(hbar, pri, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hbar, pri = np.asarray(hbar, dtype=float).ravel(), np.asarray(pri, dtype=float).ravel()
    labels = np.asarray(labels).ravel()
    if not len(hbar) == len(pri) == len(labels):
        raise ValueError(f"lengths differ: hbar {len(hbar)}, pri {len(pri)}, labels {len(labels)}")
    if len(labels) < MIN_SAMPLES:
        raise ValueError(f"need at least {MIN_SAMPLES} samples, got {len(labels)}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (correct) or 1 (hallucinated)")
    if labels.min() == labels.max():
        raise ValueError(f"labels hold one class only (all {int(labels[0])}); need both 0 and 1")
    if (smaller := min(np.count_nonzero(labels == 0), np.count_nonzero(labels == 1))) < CV_FOLDS:
        raise ValueError(f"the smaller class has {smaller} samples; the joint model's {CV_FOLDS}-fold CV needs "
                         f"at least {CV_FOLDS} of each class (0 and 1)")
    return hbar, pri, labels.astype(int)


def _detector_scores(hbar: np.ndarray, pri: np.ndarray, weights: dict) -> dict:
    """Score of each detector, higher = more likely hallucinated (ℏₛ is inverted)."""
    return {"hbar": -hbar, "pri": pri, "joint": joint_probability(hbar, pri, weights)}


def detector_metrics(score: np.ndarray, labels: np.ndarray, n_boot: int, seed: int) -> dict:
    """AUROC, its bootstrap CI, PR-AUC and the best threshold at recall ≥ 0.9 on the score scale."""
    threshold, precision, _ = threshold_at_recall(score, labels)
    return {
        "auroc": auroc(labels, score),
        "auroc_ci": bootstrap_auroc_ci(score, labels, n_boot=n_boot, seed=seed),
        "pr_auc": float(lazy.average_precision_score(labels, score)),
        "threshold": threshold,
        "precision": precision,
    }


def _rule_stats(flagged: np.ndarray, labels: np.ndarray) -> dict:
    """Precision (None when nothing is flagged), recall and confusion counts of a flagging rule."""
    tp = int(np.sum(flagged & (labels == 1)))
    fp = int(np.sum(flagged & (labels == 0)))
    fn = int(np.sum(~flagged & (labels == 1)))
    tn = int(np.sum(~flagged & (labels == 0)))
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }
