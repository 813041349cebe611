"""Every detector side by side: cross-validated AUROC on the training split, the best one
Platt-scaled into a `risk` probability, and the same detectors checked on held-out data.

The detectors themselves (what each reads, how it is fitted and scored) are in
signals/detectors.py.

Pure numpy / scikit-learn; outputs are JSON-ready except the fitted probes.
"""

import numpy as np

from signals import lazy
from signals import detectors as registry
from signals.probe import sigmoid
from signals.ranking import auroc
from signals.statistics import bootstrap_auroc_difference, detector_metrics

CV_FOLDS = 5
MIN_PER_CLASS = 2 * CV_FOLDS  # so that the fits inside each fold can run their own CV
PLATT_C = 1e4  # Platt scaling: a (nearly) unregularised 1-D logistic fit


def detector_score(name: str, features: dict, detectors: dict, joint_weights: dict) -> np.ndarray:
    """Scores of detector `name`, higher = more likely hallucinated.

    `features` maps feature names to arrays (or floats); `detectors` is the params' "detectors"
    (their fitted entries); `joint_weights` the params' "joint_model_weights".
    """
    return registry.get(name).score(detectors.get(name, {}), features, joint_weights)


def risk_probability(score, risk: dict) -> np.ndarray:
    """The Platt-scaled probability of a detector score: sigmoid(a · score + b)."""
    return sigmoid(risk["a"] * np.asarray(score, dtype=float) + risk["b"])


def _fitted_score(detector, entry: dict, features: dict, states: dict) -> np.ndarray:
    """The score of a detector just fitted (one with a probe reads the states through it)."""
    if hasattr(detector, "score_fitted"):
        return detector.score_fitted(entry, features, states)
    return detector.score(entry, features)


def served_probe(ranking: list, risk_detector: str) -> str | None:
    """The position of the probe a calibration serves: the one `risk` reads, if it reads one (a
    probe, or a model with a probe input), else the best-ranked probe; None without probes."""
    detector = registry.get(risk_detector)
    if registry.is_probe(risk_detector):
        return detector.position
    if (reads := getattr(detector, "probe", None)) is not None:
        return reads.position
    probes = [name for name in ranking if registry.is_probe(name)]
    return registry.get(probes[0]).position if probes else None


def range_probe(ranking: list, risk_detector: str) -> str | None:
    """The position of the probe whose distance says whether a request lies in a calibration's
    range (and routes it among calibrations): the prompt-end probe when there is one (the prompt
    says what kind of traffic a request is, before any answer), else the served probe."""
    if "probe_prompt_end" in ranking:
        return registry.get("probe_prompt_end").position
    return served_probe(ranking, risk_detector)


def too_few(labels) -> str | None:
    """Why these labels are too few for the selection's nested CV, or None."""
    labels = np.asarray(labels).ravel()
    smaller = min(np.count_nonzero(labels == 0), np.count_nonzero(labels == 1))
    if smaller < MIN_PER_CLASS:
        return (f"detector selection needs at least {MIN_PER_CLASS} samples of each class "
                f"(nested {CV_FOLDS}-fold CV); the smaller class has {smaller}")
    return None


# preferred, in this order, when the selection cannot tell detectors apart
POOLED = ("scores_probe_model", "scores_model", "joint")


def one_se_choice(ranking: list, detectors: dict, fold_auroc: dict) -> str:
    """The one-standard-error rule: of the detectors whose selection AUROC is within one standard
    error (of the best one's fold AUROCs) of the best, the first pooled model (`POOLED`: it leans on
    every signal, so no single one failing on new traffic sinks it), else the best."""
    best = ranking[0]
    folds = np.asarray(fold_auroc[best])
    floor = detectors[best]["cv_auroc"] - folds.std(ddof=1) / np.sqrt(len(folds))
    return next((name for name in POOLED if name in detectors and detectors[name]["cv_auroc"] >= floor), best)


def _stratified(labels: np.ndarray, seed: int) -> list:
    return list(lazy.StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def _cross_scores(names: list, features: dict, states: dict, labels: np.ndarray, folds: list, seed: int,
                  groups: np.ndarray | None) -> tuple:
    """Each detector fitted on the training part of every fold (with its samples' `groups`) and
    scored on the rest: its out-of-fold scores and its AUROC per fold."""
    oof = {name: np.empty(len(labels)) for name in names}
    fold_auroc = {name: [] for name in names}
    for train, test in folds:
        part = {k: v[train] for k, v in features.items()}, {k: v[train] for k, v in states.items()}
        rest = {k: v[test] for k, v in features.items()}, {k: v[test] for k, v in states.items()}
        for name in names:
            detector = registry.get(name)
            fitted = detector.fit(part[0], labels[train], part[1], seed, None if groups is None else groups[train])
            score = _fitted_score(detector, fitted, *rest)
            oof[name][test] = score
            fold_auroc[name].append(auroc(labels[test], score))
    return oof, fold_auroc


def source_folds(labels: np.ndarray, groups) -> list | None:
    """Leave-one-source-out folds [(train, test)], when the samples come from two or more sources,
    each holding both classes, and the rest of each is enough to fit on (`too_few`); else None."""
    if groups is None:
        return None
    groups = np.asarray(groups)
    sources = np.unique(groups)
    if len(sources) < 2:
        return None
    folds = [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in sources]
    if any(len(np.unique(labels[test])) < 2 or too_few(labels[train]) for train, test in folds):
        return None
    return folds


def select_detectors(features: dict, labels, states: dict | None = None, seed: int = 42, groups=None) -> dict:
    """Rank every detector by cross-validated AUROC on these (training) samples; Platt-scale the best.

    features: name → one value per sample (must hold "hbar" and "pri"); states: position → block
    outputs (n, L, D), one probe per position; groups: each sample's source, when they come from
    several (fits on hidden states then weigh the classes of every source equally). Each detector
    is fitted (oriented, for a single feature; layer and C chosen by inner CV, for a probe) on the
    training part of every fold and scored on the rest, so a probe's layer choice is inside the CV.
    The folds:

    - samples of two or more sources (`source_folds`): leave one source out. Each source is scored
      by a detector fitted on the others only, and a detector's selection AUROC is the mean over
      sources of its AUROC on the left-out source: how well it holds on a kind of traffic it was not
      fitted on (recognising a source earns nothing). Its Platt scaling weighs both classes equally,
      since the mixture's share of wrong answers says nothing about any traffic;
    - otherwise: `CV_FOLDS` stratified folds (shuffled with `seed`); the selection AUROC is the mean
      fold AUROC, and the Platt scaling keeps the training share of each class.

    Detectors are ranked by that AUROC (ties: the earlier detector; single features first, then
    "joint", the scores models, then probes); `risk` comes from the best one, or from a pooled model
    within one standard error of it (`one_se_choice`), and its out-of-fold scores fit the Platt
    scaling (with sources left out, those of stratified folds: one fit's scores, on one scale).
    Returns {"detectors": {name: entry}, "ranking": [names], "risk": {"detector", "a", "b",
    "cv_auroc", "selected_by", "prior"}, "risk_scores": the out-of-fold scores the Platt scaling was
    fitted on, "probes": {position: Probe fitted on all samples}}.
    """
    labels = np.asarray(labels).ravel().astype(int)
    if (reason := too_few(labels)) is not None:
        raise ValueError(reason)
    states = states or {}
    groups = None if groups is None else np.asarray(groups)
    features = {k: np.asarray(v, dtype=float) for k, v in features.items()}
    names = [name for name, d in registry.REGISTRY.items() if d.available(features, states)]
    folds = source_folds(labels, groups)
    by_source = folds is not None
    oof, fold_auroc = _cross_scores(names, features, states, labels, folds or _stratified(labels, seed), seed, groups)
    detectors, probes = {}, {}
    for name in names:
        fitted = registry.get(name).fit(features, labels, states, seed, groups)
        if "probe" in fitted:
            probes[registry.get(name).position] = fitted.pop("probe")
        fitted.pop("weights", None)  # the joint model's weights are the params' joint_model_weights
        fitted.pop("input_probe", None)  # the same fit as its probe's own: served from that one's file
        detectors[name] = {**fitted, "cv_auroc": float(np.mean(fold_auroc[name])), "cv_auroc_folds": fold_auroc[name]}
        if by_source:
            detectors[name]["cv_auroc_by_source"] = dict(zip(np.unique(groups).tolist(), fold_auroc[name]))
    ranking = sorted(names, key=lambda n: -detectors[n]["cv_auroc"])  # stable: ties keep their order
    best = one_se_choice(ranking, detectors, fold_auroc)
    if by_source:  # scores of models fitted on different sources are not on one scale: Platt needs one fit's
        oof = _cross_scores([best], features, states, labels, _stratified(labels, seed), seed, groups)[0]
    platt = lazy.LogisticRegression(C=PLATT_C, max_iter=10_000, class_weight="balanced" if by_source else None)
    platt.fit(oof[best][:, None], labels)
    risk = {"detector": best, "a": float(platt.coef_[0, 0]), "b": float(platt.intercept_[0]),
            "cv_auroc": detectors[best]["cv_auroc"],
            "selected_by": "leave-one-source-out AUROC" if by_source else "CV AUROC",
            "prior": 0.5 if by_source else float(labels.mean())}
    return {"detectors": detectors, "ranking": ranking, "risk": risk, "risk_scores": oof[best], "probes": probes}


def detector_scores(features: dict, params: dict) -> dict:
    """The score of every detector of the params that `features` can score, in ranking order."""
    return {name: detector_score(name, features, params["detectors"], params["joint_model_weights"])
            for name in params["ranking"] if registry.get(name).available(features, {})}


def evaluate_detectors(scores: dict, labels, params: dict, n_boot: int = 1000, seed: int = 42) -> dict:
    """Detector scores (`detector_scores`) on held-out samples: AUROC with its bootstrap CI, PR-AUC
    and precision at recall ≥ 0.9 of each; the `risk` probability's Brier score, and its detector's
    AUROC less that of the best single raw score on these samples (the best picked on them, which
    favours the raw score), with a paired bootstrap CI."""
    labels = np.asarray(labels).ravel().astype(int)
    out = {}
    for name, score in scores.items():
        m = detector_metrics(score, labels, n_boot, seed)
        out[name] = {"auroc": m["auroc"], "auroc_ci": m["auroc_ci"], "pr_auc": m["pr_auc"],
                     "precision_at_recall_0_9": m["precision"], "cv_auroc": params["detectors"][name]["cv_auroc"]}
    result = {"detectors": out}
    risk = params["risk"]
    if risk["detector"] in scores:
        p = risk_probability(scores[risk["detector"]], risk)
        result["risk"] = {"detector": risk["detector"], "auroc": out[risk["detector"]]["auroc"],
                          "brier": float(lazy.brier_score_loss(labels, p)),
                          "brier_base_rate": float(lazy.brier_score_loss(labels, np.full(len(labels), labels.mean())))}
        singles = [n for n in scores if registry.is_single(n) and n != risk["detector"]]
        if singles:
            best = max(singles, key=lambda n: out[n]["auroc"])
            difference = bootstrap_auroc_difference(scores[risk["detector"]], scores[best], labels, n_boot, seed)
            result["risk"]["vs_best_single"] = {"detector": best, "auroc": out[best]["auroc"], **difference}
    return result
