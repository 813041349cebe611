"""Linear probe on one transformer block's last-token hidden state.

Calibration holds, per sample, the last-position output of every block at one position
(``"prompt_end"``: step 0; ``"last_step"``: the last generated step; ``"answer_mean"``: the mean
over every step of the answer, i.e. the states that chose its tokens), shape
(n_samples, n_layers, hidden), and binary labels (1 = hallucinated). An answer-mean probe is
linear, so serving it needs no state kept: its logit is the mean of the per-step logits, and its
distance the RMS of the per-step distances (computed for training from the steps' second moment,
``"answer_sq_mean"``). ``fit_probe`` picks the layer
whose StandardScaler + L2 logistic regression has the best cross-validated AUROC and refits it on
all the data; ``Probe.risk`` then scores captured states with plain numpy (no scikit-learn at
serving time). Probes are stored as ``.npz`` files, checked against a SHA-256 digest on load.
"""

import hashlib
import io
import zipfile
from dataclasses import dataclass

import numpy as np

from signals import lazy
from signals.ranking import auroc

POSITIONS = ("prompt_end", "last_step", "answer_mean")
# What calibration saves per sample (in this order): the states at each position, then the mean of
# the squared step states over the answer, which an answer-mean probe's distance needs
SECOND_MOMENT = "answer_sq_mean"
STATE_ROWS = (*POSITIONS, SECOND_MOMENT)
DEFAULT_CS = (0.001, 0.01, 0.1, 1.0)


class ProbeError(ValueError):
    """A probe file is missing, malformed, or does not match its checksum."""


@dataclass
class Probe:
    """Standardise one layer's hidden state, then a logistic score: P(hallucinated)."""

    layer: int
    position: str
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    cv_auroc: float
    # 99th percentile of `distance` over the training states: beyond it a state is unlike those
    # the probe was fitted on, and its output an extrapolation (None: unknown)
    distance_limit: float | None = None

    def distance(self, hidden_layers: np.ndarray, second_moment: np.ndarray | None = None) -> np.ndarray:
        """RMS of the standardised features at the probe's block: about 1 on training-like states.

        With `second_moment` (the mean of the squared step states of each answer, when
        `hidden_layers` is their mean), the RMS over the answer's steps as well: what serving
        gets from the per-step distances (`reading`).
        """
        h = self._block(hidden_layers)
        if second_moment is None:
            return np.sqrt(np.mean(((h - self.mean) / self.scale) ** 2, axis=-1))
        mean_square = self._block(second_moment) - 2 * h * self.mean + self.mean ** 2  # E_t[(h_t − mean)²]
        return np.sqrt(np.maximum(np.mean(mean_square / self.scale ** 2, axis=-1), 0.0))

    def distance_in(self, states: dict) -> np.ndarray:
        """`distance` of saved states (STATE_ROWS name → (n, L, D)) at this probe's position."""
        return self.distance(states[self.position], second_moment_in(states, self.position))

    def reading(self, logits: list, distances: list) -> tuple[float, float]:
        """A response's (logit, distance) from this probe's values at each of its steps: those of
        the prompt-end step, of the last step, or over all steps (answer mean: the mean logit, the
        RMS distance)."""
        if self.position == "answer_mean":
            return float(np.mean(logits)), float(np.sqrt(np.mean(np.square(distances))))
        at = 0 if self.position == "prompt_end" else -1
        return logits[at], distances[at]

    def logit(self, hidden_layers: np.ndarray) -> np.ndarray:
        """The probe's logit for states of shape (n, n_layers, hidden) → (n,), or
        (n_layers, hidden) → shape ()."""
        return ((self._block(hidden_layers) - self.mean) / self.scale) @ self.coef + self.intercept

    def _block(self, hidden_layers: np.ndarray) -> np.ndarray:
        h = np.asarray(hidden_layers, dtype=np.float64)
        if h.ndim not in (2, 3) or h.shape[-2] <= self.layer or h.shape[-1] != self.coef.size:
            raise ValueError(f"hidden states of shape {h.shape} do not fit a probe on layer "
                             f"{self.layer} with hidden size {self.coef.size}")
        return h[..., self.layer, :]

    def risk(self, hidden_layers: np.ndarray) -> np.ndarray:
        """Probability of hallucination: the sigmoid of `logit`."""
        return sigmoid(self.logit(hidden_layers))


def second_moment_in(states: dict, position: str) -> np.ndarray | None:
    """The saved second moment of the answer steps for an answer-mean probe's distance, else None."""
    return states.get(SECOND_MOMENT) if position == "answer_mean" else None


def sigmoid(z) -> np.ndarray:
    """1 / (1 + exp(−z)), without overflow for large |z|."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def source_balanced_weights(labels, groups) -> np.ndarray | None:
    """Sample weights that give both classes of each source equal weight (scikit-learn's
    "balanced" within every source; a source keeps its total weight), or None for one source.

    Sources differ in how often the model is wrong (nearly always on NQ-open, half the time with a
    context paragraph), and hidden states tell sources apart easily: unweighted, a probe learns
    which source a question comes from, which says nothing on traffic of another kind."""
    if groups is None:
        return None
    labels, groups = np.asarray(labels).ravel(), np.asarray(groups)
    if len(np.unique(groups)) < 2:
        return None
    weights = np.empty(len(labels))
    for source in np.unique(groups):
        in_source = groups == source
        for label in np.unique(labels[in_source]):
            cell = in_source & (labels == label)
            weights[cell] = in_source.sum() / (2 * cell.sum())
    return weights


def _weight(weights: np.ndarray | None, index) -> np.ndarray | None:
    return None if weights is None else weights[index]


def _logreg(c: float):
    return lazy.LogisticRegression(C=c, solver="lbfgs", max_iter=2000)


def _check_inputs(states, labels, cv_folds: int) -> tuple[np.ndarray, np.ndarray]:
    states, labels = np.asarray(states), np.asarray(labels).ravel()
    if states.ndim != 3:
        raise ValueError(f"states must be (n_samples, n_layers, hidden), got shape {states.shape}")
    if len(labels) != len(states):
        raise ValueError(f"{len(states)} states but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (correct) or 1 (hallucinated)")
    minority = min(np.count_nonzero(labels == 0), np.count_nonzero(labels == 1))
    if minority < cv_folds:
        raise ValueError(f"need at least {cv_folds} samples of each class for {cv_folds}-fold CV, "
                         f"the smaller class has {minority}")
    return states, labels.astype(int)


def fit_layer_probes(states: np.ndarray, labels, seed: int = 42, cv_folds: int = 5,
                     Cs=DEFAULT_CS, sample_weight: np.ndarray | None = None) -> dict:
    """Cross-validated AUROC of a scaled L2 logistic probe on every layer.

    For each layer, C is chosen from ``Cs`` by stratified ``cv_folds``-fold CV (shuffled with
    ``seed``, the same folds for every layer and C) on mean fold AUROC; exact ties go to the
    smaller C. The scaler is fitted on each fold's training part only, as in a CV'd pipeline,
    once per fold and shared by the Cs. ``sample_weight`` (e.g. ``source_balanced_weights``) weighs
    both the fits and the fold AUROCs. Returns {"layer_auroc": [CV AUROC at the chosen C],
    "layer_C": [chosen C], "best_layer": highest CV AUROC, ties to the earlier layer}.
    """
    states, labels = _check_inputs(states, labels, cv_folds)
    folds = list(lazy.StratifiedKFold(cv_folds, shuffle=True, random_state=seed)
                 .split(np.zeros(len(labels)), labels))
    layer_auroc, layer_c = [], []
    for layer in range(states.shape[1]):
        x = states[:, layer, :].astype(np.float64)
        fold_auroc = np.empty((len(Cs), len(folds)))
        for k, (train, test) in enumerate(folds):
            scaler = lazy.StandardScaler().fit(x[train])
            x_train, x_test = scaler.transform(x[train]), scaler.transform(x[test])
            for j, c in enumerate(Cs):
                model = _logreg(c).fit(x_train, labels[train], sample_weight=_weight(sample_weight, train))
                fold_auroc[j, k] = auroc(labels[test], model.decision_function(x_test),
                                         sample_weight=_weight(sample_weight, test))
        mean = fold_auroc.mean(axis=1)
        best = int(np.argmax(mean))
        layer_auroc.append(float(mean[best]))
        layer_c.append(float(Cs[best]))
    return {"layer_auroc": layer_auroc, "layer_C": layer_c,
            "best_layer": int(np.argmax(layer_auroc))}


def fit_probe(states: np.ndarray, labels, position: str, seed: int = 42, cv_folds: int = 5,
              Cs=DEFAULT_CS, second_moment: np.ndarray | None = None,
              sample_weight: np.ndarray | None = None) -> tuple[Probe, dict]:
    """Pick the best layer with ``fit_layer_probes``, refit it on all the data at its chosen C
    (both with ``sample_weight``).
    The in-range limit is the 99th percentile of the training states' ``distance`` (with
    ``second_moment`` for an answer-mean probe).

    Returns the Probe and the per-layer CV curve (``fit_layer_probes``' dict) for the report.
    """
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    curve = fit_layer_probes(states, labels, seed=seed, cv_folds=cv_folds, Cs=Cs, sample_weight=sample_weight)
    layer = curve["best_layer"]
    x = np.asarray(states)[:, layer, :].astype(np.float64)
    scaler = lazy.StandardScaler().fit(x)
    logreg = _logreg(curve["layer_C"][layer]).fit(scaler.transform(x), np.asarray(labels).ravel(),
                                                  sample_weight=sample_weight)
    probe = Probe(layer=layer, position=position, mean=scaler.mean_.copy(),
                  scale=scaler.scale_.copy(), coef=logreg.coef_[0].copy(),
                  intercept=float(logreg.intercept_[0]), cv_auroc=curve["layer_auroc"][layer])
    probe.distance_limit = float(np.quantile(probe.distance(states, second_moment), 0.99))
    return probe, curve


def out_of_fold_logits(states: np.ndarray, labels, layer: int, c: float, seed: int = 42, cv_folds: int = 5,
                       sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Each sample's logit from the probe on block `layer` at C `c` fitted (with `sample_weight`)
    on the other stratified folds: how the probe scores samples it was not fitted on."""
    x, labels = np.asarray(states)[:, layer, :].astype(np.float64), np.asarray(labels).ravel()
    logits = np.empty(len(labels))
    for train, test in lazy.StratifiedKFold(cv_folds, shuffle=True, random_state=seed).split(x, labels):
        scaler = lazy.StandardScaler().fit(x[train])
        model = _logreg(c).fit(scaler.transform(x[train]), labels[train], sample_weight=_weight(sample_weight, train))
        logits[test] = model.decision_function(scaler.transform(x[test]))
    return logits


def layer_test_auroc(train_states, train_labels, test_states, test_labels, layer_C,
                     sample_weight: np.ndarray | None = None) -> list[float]:
    """Diagnostic only, never used to choose anything: per layer, the probe fitted (with
    ``sample_weight``, as the calibration fitted it) on the training states at that layer's
    CV-chosen C (``layer_C``), scored by AUROC on the test states."""
    train_labels, test_labels = np.asarray(train_labels).ravel(), np.asarray(test_labels).ravel()
    out = []
    for layer, c in enumerate(layer_C):
        x = np.asarray(train_states)[:, layer, :].astype(np.float64)
        scaler = lazy.StandardScaler().fit(x)
        model = _logreg(c).fit(scaler.transform(x), train_labels, sample_weight=sample_weight)
        test = scaler.transform(np.asarray(test_states)[:, layer, :].astype(np.float64))
        out.append(auroc(test_labels, model.decision_function(test)))
    return out


def to_bytes(probe: Probe) -> bytes:
    """The probe as the bytes of an .npz archive (what a probe file holds)."""
    buf = io.BytesIO()
    np.savez(buf, layer=np.int64(probe.layer), position=np.str_(probe.position),
             mean=np.asarray(probe.mean, dtype=np.float64),
             scale=np.asarray(probe.scale, dtype=np.float64),
             coef=np.asarray(probe.coef, dtype=np.float64),
             intercept=np.float64(probe.intercept), cv_auroc=np.float64(probe.cv_auroc),
             distance_limit=np.float64(np.nan if probe.distance_limit is None else probe.distance_limit))
    return buf.getvalue()


def from_bytes(data: bytes, sha256: str, name: str = "probe") -> Probe:
    """The probe in ``data``; raise ProbeError (naming ``name``) if its SHA-256 is not ``sha256``
    or the archive is malformed."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != str(sha256).strip().lower():
        raise ProbeError(f"probe file {name}: SHA-256 {digest} does not match expected {sha256}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            probe = Probe(layer=int(f["layer"]), position=str(f["position"]), mean=f["mean"],
                          scale=f["scale"], coef=f["coef"], intercept=float(f["intercept"]),
                          cv_auroc=float(f["cv_auroc"]))
            if "distance_limit" in f.files and np.isfinite(f["distance_limit"]):
                probe.distance_limit = float(f["distance_limit"])
    except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as e:
        raise ProbeError(f"probe file {name}: malformed ({e})") from e
    hidden = probe.coef.size
    if (probe.position not in POSITIONS or probe.layer < 0 or probe.coef.ndim != 1
            or probe.mean.shape != (hidden,) or probe.scale.shape != (hidden,)):
        raise ProbeError(f"probe file {name}: malformed (inconsistent fields)")
    return probe
