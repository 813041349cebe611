"""Linear hidden-state probe (signals/probe.py) on synthetic hidden states with a planted signal."""

import hashlib

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from app.calibration.probe_files import load_probe, save_probe
from signals.probe import Probe, ProbeError, fit_layer_probes, fit_probe, source_balanced_weights

N, LAYERS, HIDDEN, SIGNAL_LAYER = 400, 8, 64, 5


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Small fits: threaded BLAS only adds overhead on a busy 2-core box."""
    with threadpool_limits(limits=1):
        yield


def make_states(n: int, seed: int, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Float32 states, every feature with its own offset and scale; layer 5 also carries
    ±2 along one fixed unit direction by label (d' = 4 on that axis), the others are noise."""
    rng = np.random.default_rng(seed)
    fixed = np.random.default_rng(0)  # the same direction, offsets and scales for every draw
    direction = fixed.standard_normal(HIDDEN)
    direction /= np.linalg.norm(direction)
    offset = fixed.normal(0, 3, (LAYERS, HIDDEN))
    scale = fixed.uniform(0.5, 4, (LAYERS, HIDDEN))
    y = rng.integers(0, 2, n) if labels is None else np.asarray(labels)
    x = rng.standard_normal((n, LAYERS, HIDDEN))
    x[:, SIGNAL_LAYER] += 2.0 * np.outer(2 * y - 1, direction)
    return (offset + scale * x).astype(np.float32), y


@pytest.fixture(scope="module")
def planted():
    states, labels = make_states(N, seed=1)
    probe, curve = fit_probe(states, labels, "last_step")
    return states, labels, probe, curve


def test_recovers_planted_layer(planted):
    states, labels, probe, curve = planted
    assert curve["best_layer"] == probe.layer == SIGNAL_LAYER
    assert len(curve["layer_auroc"]) == len(curve["layer_C"]) == LAYERS
    assert probe.cv_auroc == curve["layer_auroc"][SIGNAL_LAYER] > 0.95
    assert probe.position == "last_step"
    held_out, held_labels = make_states(N, seed=2)
    assert roc_auc_score(held_labels, probe.risk(held_out)) > 0.95


def test_chance_on_shuffled_labels():
    """The max over layers of CV AUROCs is biased upward, so check the mean over layers and a
    probe fitted on shuffled labels scored on fresh data (labels shuffled too) instead.

    Fresh data must not be scored against its true labels: the shuffled-label probe's weights
    catch part of layer 5's high-variance planted axis by chance, which then tracks the true
    labels (AUROC 0.11 here), although the probe learned nothing about them."""
    rng = np.random.default_rng(4)
    states, labels = make_states(N, seed=3)
    probe, curve = fit_probe(states, rng.permutation(labels), "prompt_end")
    assert 0.40 < np.mean(curve["layer_auroc"]) < 0.60
    held_out, held_labels = make_states(N, seed=5)
    assert 0.40 < roc_auc_score(rng.permutation(held_labels), probe.risk(held_out)) < 0.60


def test_risk_matches_sklearn_pipeline(planted):
    states, labels, probe, curve = planted
    pipe = make_pipeline(StandardScaler(),
                         LogisticRegression(C=curve["layer_C"][probe.layer], max_iter=2000))
    pipe.fit(states[:, probe.layer, :], labels)  # float32 as captured: max |diff| ~1e-7 here
    expected = pipe.predict_proba(states[:, probe.layer, :])[:, 1]
    risk = probe.risk(states)
    assert risk.shape == (N,)
    np.testing.assert_allclose(risk, expected, rtol=0, atol=1e-6)
    for i in (0, 1, N - 1):
        single = probe.risk(states[i])
        assert single.shape == ()
        assert abs(float(single) - expected[i]) < 1e-6


def test_risk_rejects_mismatched_states(planted):
    _, _, probe, _ = planted
    with pytest.raises(ValueError, match="hidden size"):
        probe.risk(np.zeros((3, LAYERS, HIDDEN + 1)))
    with pytest.raises(ValueError, match="layer"):
        probe.risk(np.zeros((3, SIGNAL_LAYER, HIDDEN)))


def test_fit_rejects_bad_inputs():
    states, labels = make_states(40, seed=6)
    with pytest.raises(ValueError, match="position"):
        fit_probe(states, labels, "middle")
    with pytest.raises(ValueError, match="labels"):
        fit_layer_probes(states, labels[:-1])
    with pytest.raises(ValueError, match="each class"):
        fit_layer_probes(states, np.r_[np.ones(37), np.zeros(3)])


def test_save_load_round_trip(planted, tmp_path):
    states, _, probe, _ = planted
    path = tmp_path / "probe.npz"
    digest = save_probe(probe, path)
    assert len(digest) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["probe.npz"]  # no temp file left behind
    loaded = load_probe(path, digest)
    assert isinstance(loaded, Probe)
    assert (loaded.layer, loaded.position, loaded.cv_auroc, loaded.distance_limit) == (
        probe.layer, probe.position, probe.cv_auroc, probe.distance_limit)
    np.testing.assert_array_equal(loaded.risk(states), probe.risk(states))


def test_load_rejects_tampered_or_missing(planted, tmp_path):
    _, _, probe, _ = planted
    path = tmp_path / "probe.npz"
    digest = save_probe(probe, path)
    with pytest.raises(ProbeError, match="probe.npz"):
        load_probe(path, "0" * 64)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ProbeError, match="probe.npz.*does not match"):
        load_probe(path, digest)
    with pytest.raises(ProbeError, match="missing.npz"):
        load_probe(tmp_path / "missing.npz", digest)


def test_load_rejects_malformed_file_with_matching_checksum(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not an npz archive")
    with pytest.raises(ProbeError, match="junk.npz.*malformed"):
        load_probe(path, hashlib.sha256(path.read_bytes()).hexdigest())


def test_distance_limit_bounds_training_states_and_flags_foreign_ones(planted):
    states, _, probe, _ = planted
    d = probe.distance(states)
    assert np.mean(d <= probe.distance_limit) == pytest.approx(0.99, abs=0.005)
    assert 0.8 < np.median(d) < 1.2  # standardised features: RMS about 1 on training-like states
    fresh, _ = make_states(N, seed=3)
    assert np.mean(probe.distance(fresh) <= probe.distance_limit) > 0.9
    foreign = fresh + 10 * fresh.std(axis=0)  # far outside the training range
    assert not np.any(probe.distance(foreign) <= probe.distance_limit)


def test_an_answer_mean_probe_reads_the_mean_of_its_steps(planted):
    """Served step by step (mean logit, RMS distance), an answer-mean probe gives what it gives on
    the steps' mean state and second moment, as calibration saves them."""
    probe = Probe(**{**vars(planted[2]), "position": "answer_mean"})
    steps, _ = make_states(7, seed=9)  # one answer's 7 step states, (7, L, D)
    logits, distances = probe.logit(steps), probe.distance(steps)
    logit, distance = probe.reading(list(logits), list(distances))
    mean, square = steps.astype(np.float64).mean(axis=0), (steps.astype(np.float64) ** 2).mean(axis=0)
    assert logit == pytest.approx(float(probe.logit(mean)), rel=1e-9)
    assert distance == pytest.approx(float(probe.distance(mean, square)), rel=1e-9)
    states = {"answer_mean": mean[None], "answer_sq_mean": square[None]}
    assert probe.distance_in(states)[0] == pytest.approx(distance, rel=1e-9)
    assert distance > float(probe.distance(mean))  # the steps spread wider than their mean
    for position, at in (("prompt_end", 0), ("last_step", -1)):
        fixed = Probe(**{**vars(probe), "position": position})
        assert fixed.reading(list(logits), list(distances)) == (logits[at], distances[at])


def test_source_balanced_weights_even_out_the_classes_of_every_source():
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    groups = np.array(["hard"] * 4 + ["easy"] * 6)
    w = source_balanced_weights(labels, groups)
    for source in ("hard", "easy"):
        cell = {y: w[(groups == source) & (labels == y)].sum() for y in (0, 1)}
        assert cell[0] == pytest.approx(cell[1])  # each class half of its source
        assert cell[0] + cell[1] == pytest.approx(np.sum(groups == source))  # a source keeps its weight
    assert source_balanced_weights(labels, None) is None
    assert source_balanced_weights(labels, np.repeat("one", 10)) is None


def test_a_source_balanced_probe_does_not_learn_which_source_a_sample_comes_from():
    """Two sources, wrong 85% and 15% of the time, told apart by one hidden dimension; another
    dimension carries a weak label signal within each source. Unweighted, the probe leans on the
    source; weighted, the source carries no label information and the probe leaves it."""
    rng = np.random.default_rng(4)
    n = 600
    groups = np.repeat(["hard", "easy"], n // 2)
    labels = np.where(groups == "hard", rng.random(n) < 0.85, rng.random(n) < 0.15).astype(int)
    states = rng.standard_normal((n, 2, 8))
    states[:, 1, 0] += 3.0 * (groups == "hard")  # the source
    states[:, 1, 1] += 0.8 * labels  # the answer
    plain, _ = fit_probe(states, labels, "prompt_end")
    balanced, _ = fit_probe(states, labels, "prompt_end", sample_weight=source_balanced_weights(labels, groups))
    assert plain.layer == balanced.layer == 1
    assert abs(plain.coef[0]) > abs(plain.coef[1])
    assert abs(balanced.coef[0]) < 0.25 * abs(balanced.coef[1])
