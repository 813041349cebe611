"""Every detector one forward pass gives, one small unit each: what it reads, how it is fitted,
how it scores a sample, and how a report describes it. Selection, params, the report and the
README table look detectors up here instead of checking their names.

A detector maps a sample to a score, higher = more likely hallucinated. Its inputs are
`features` (name → value per sample: response scores and step-0 verdict masses, plus a probe's
logit where whoever holds the states computed it) and, while fitting, `states` (position →
block outputs (n, L, D)) and `groups` (each sample's source, or None: fits on hidden states weigh
the classes of every source equally, `source_balanced_weights`). `fit` returns the detector's
params entry (JSON-ready; a probe's entry also carries the fitted Probe under "probe", which the
caller saves and removes; a model with a probe input carries it under "input_probe", which the
caller removes).
"""

import numpy as np

from signals import lazy
from signals.probe import POSITIONS, fit_probe, out_of_fold_logits, second_moment_in, source_balanced_weights
from signals.ranking import auroc
from signals.statistics import fit_joint, joint_logit


class Feature:
    """One response score or step-0 verdict mass, times a direction: fixed (the seed signals keep
    the protocol's: ℏₛ −1, as it is inverted on HaluEval; PRI +1) or oriented on the training data."""

    seed = False  # one of the prototype's signals

    def __init__(self, name: str, source: str, key: str, reads: str, direction: int | None = None):
        self.name, self.source, self.key, self.reads, self.direction = name, source, key, reads, direction

    def feature(self, scores: dict, verdict: dict):
        """This detector's input for one response (its scores dict and step-0 verdict masses)."""
        return (scores if self.source == "scores" else verdict)[self.key]

    def available(self, features: dict, states: dict) -> bool:
        return self.name in features

    def fit(self, features: dict, labels: np.ndarray, states: dict, seed: int, groups=None) -> dict:
        if self.direction is not None:
            return {"direction": self.direction}
        return {"direction": 1 if auroc(labels, features[self.name]) >= 0.5 else -1}

    def score(self, entry: dict, features: dict, joint_weights: dict | None = None) -> np.ndarray:
        return entry.get("direction", 1) * np.asarray(features[self.name], dtype=float)

    def describe(self, entry: dict) -> str:
        if self.seed:
            return self.reads
        return f"{self.reads} ({'higher' if entry['direction'] > 0 else 'lower'} flags)"


class SeedFeature(Feature):
    seed = True


class Joint:
    """The prototype's joint logistic model on (ℏₛ, PRI): its logit."""

    name, reads, seed = "joint", "seed: logistic on (ℏₛ, PRI)", True

    def available(self, features: dict, states: dict) -> bool:
        return "hbar" in features and "pri" in features

    def fit(self, features: dict, labels: np.ndarray, states: dict, seed: int, groups=None) -> dict:
        return {"weights": fit_joint(features["hbar"], features["pri"], labels, seed=seed)}

    def score(self, entry: dict, features: dict, joint_weights: dict | None = None) -> np.ndarray:
        return joint_logit(features["hbar"], features["pri"], joint_weights or entry["weights"])

    def describe(self, entry: dict) -> str:
        return self.reads


class ScoresModel:
    """A logistic model on every response score at once (ℏₛ, PRI, mean and max surprise, mean and
    max entropy: the single features read from the response's scores), standardised, L2 with C
    chosen by inner CV. Its score is the model's logit; its entry holds everything needed to compute it."""

    name, reads, seed = "scores_model", "logistic on all response scores", False
    CS = (0.01, 0.1, 1.0, 10.0)

    @property
    def inputs(self) -> tuple:
        # prob_min is left out: it is exp(−surprise_max), the same signal counted twice
        return tuple(f.name for f in FEATURES if f.source == "scores" and f.name != "prob_min")

    def available(self, features: dict, states: dict) -> bool:
        return all(name in features for name in self.inputs)

    def fit(self, features: dict, labels: np.ndarray, states: dict, seed: int, groups=None) -> dict:
        return self._fit_matrix(self._matrix(features), labels)

    def _fit_matrix(self, x: np.ndarray, labels: np.ndarray) -> dict:
        scaler = lazy.StandardScaler().fit(x)
        search = lazy.GridSearchCV(lazy.LogisticRegression(max_iter=5000), {"C": list(self.CS)}, cv=5,
                                   scoring="roc_auc")
        model = search.fit(scaler.transform(x), labels).best_estimator_
        return {"inputs": list(self.inputs), "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
                "coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]), "C": float(model.C)}

    def score(self, entry: dict, features: dict, joint_weights: dict | None = None) -> np.ndarray:
        x = self._matrix(features, entry["inputs"])
        return ((x - np.asarray(entry["mean"])) / np.asarray(entry["scale"])) @ np.asarray(entry["coef"]) \
            + entry["intercept"]

    def _matrix(self, features: dict, inputs=None) -> np.ndarray:
        return np.stack([np.asarray(features[name], dtype=float) for name in (inputs or self.inputs)], axis=-1)

    def describe(self, entry: dict) -> str:
        weights = ", ".join(f"{n} {c:+.2f}" for n, c in zip(entry["inputs"], entry["coef"]))
        return f"{self.reads} (standardised weights: {weights})"


class LinearProbe:
    """A linear probe (signals/probe.py) on the block outputs at one position; block and C chosen
    by inner CV. Its feature is the probe's logit, computed by whoever holds the states."""

    seed = False

    def __init__(self, position: str):
        self.position = position
        self.name = f"probe_{position}"
        self.reads = f"linear probe, {position.replace('_', ' ')}"

    def available(self, features: dict, states: dict) -> bool:
        return self.position in states or self.name in features

    def fit(self, features: dict, labels: np.ndarray, states: dict, seed: int, groups=None) -> dict:
        probe, curve = fit_probe(states[self.position], labels, self.position, seed=seed,
                                 second_moment=second_moment_in(states, self.position),
                                 sample_weight=source_balanced_weights(labels, groups))
        return {"direction": 1, "probe": probe, "layer": probe.layer, "C": curve["layer_C"][probe.layer],
                "layer_cv_auroc": curve["layer_auroc"], "layer_C": curve["layer_C"]}

    def score(self, entry: dict, features: dict, joint_weights: dict | None = None) -> np.ndarray:
        return np.asarray(features[self.name], dtype=float)

    def score_fitted(self, entry: dict, features: dict, states: dict) -> np.ndarray:
        """The score of a probe just fitted (its entry still holds the Probe) on these states."""
        return entry["probe"].logit(states[self.position])

    def describe(self, entry: dict) -> str:
        return f"{self.reads}, block {entry['layer'] + 1} of {len(entry['layer_cv_auroc'])}"


class ScoresProbeModel(ScoresModel):
    """The scores model with one more input: the answer-mean probe's logit (the probe fitted as its
    own detector fits it). The logistic model learns from the probe's out-of-fold logits
    (`out_of_fold_logits`: 5 stratified folds at the probe's block and C), so it weighs the probe
    as it does on answers it was not fitted on; served, it reads the calibration's saved probe
    (params "probe": its position)."""

    name, reads = "scores_probe_model", "logistic on all response scores and the answer-mean probe"
    probe = LinearProbe("answer_mean")

    @property
    def inputs(self) -> tuple:
        return (*super().inputs, self.probe.name)

    def available(self, features: dict, states: dict) -> bool:
        return all(name in features for name in super().inputs) and self.probe.available(features, states)

    def fit(self, features: dict, labels: np.ndarray, states: dict, seed: int, groups=None) -> dict:
        fitted = self.probe.fit(features, labels, states, seed, groups)
        logits = out_of_fold_logits(states[self.probe.position], labels, fitted["layer"], fitted["C"], seed,
                                    sample_weight=source_balanced_weights(labels, groups))
        scores = self._matrix(features, super().inputs)
        return {**self._fit_matrix(np.column_stack([scores, logits]), labels), "input_probe": fitted["probe"]}

    def score_fitted(self, entry: dict, features: dict, states: dict) -> np.ndarray:
        """The score of a model just fitted (its entry still holds its probe) on these states."""
        logits = entry["input_probe"].logit(states[self.probe.position])
        return self.score(entry, {**features, self.probe.name: logits})


FEATURES = (
    SeedFeature("hbar", "scores", "hbar_s", "seed: ℏₛ, top-5 mean", direction=-1),
    SeedFeature("pri", "scores", "pri", "seed: PRI, top-5 mean", direction=1),
    Feature("surprise_mean", "scores", "surprise_mean", "mean token surprise (log-perplexity)"),
    Feature("surprise_max", "scores", "surprise_max", "max token surprise"),
    Feature("entropy_mean", "scores", "entropy_mean", "mean token entropy"),
    Feature("entropy_max", "scores", "entropy_max", "max token entropy"),
    Feature("prob_min", "scores", "prob_min", "min chosen-token probability"),
    Feature("verdict_p_no", "verdict", "p_no", "step-0 probability of \"No\""),
    Feature("verdict_p_yes", "verdict", "p_yes", "step-0 probability of \"Yes\""),
)
PROBES = tuple(LinearProbe(position) for position in POSITIONS)
# In ranking order for ties: single features first, then the joint model, the scores models, then the probes.
REGISTRY = {d.name: d for d in (*FEATURES, Joint(), ScoresModel(), ScoresProbeModel(), *PROBES)}


def get(name: str):
    """The detector called `name`; KeyError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(REGISTRY)}") from None


def is_probe(name: str) -> bool:
    return isinstance(REGISTRY.get(name), LinearProbe)


def is_single(name: str) -> bool:
    """A detector that reads one raw score (a seed signal, a baseline, a verdict mass)."""
    return isinstance(REGISTRY.get(name), Feature)


def probe_for(position: str) -> LinearProbe:
    return get(f"probe_{position}")


def features(scores: dict, verdict: dict) -> dict:
    """The single-feature detectors' inputs of one response: its response scores (ResponseScores
    keys) and the step-0 probability mass on the verdict tokens (p_yes, p_no)."""
    return {d.name: d.feature(scores, verdict) for d in FEATURES}
