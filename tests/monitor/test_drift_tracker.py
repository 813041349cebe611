"""The live drift tracker: rolling windows per calibration against the reference its params hold."""

from pathlib import Path

import numpy as np
import pytest

from app.calibration.params import Params
from app.monitor.drift import NO_PROBE, NO_REFERENCE, DriftTracker, window_drift

rng = np.random.default_rng(0)
REFERENCE = {"risk": sorted(rng.uniform(0, 1, 400).round(5)), "probe_distance_ratio": sorted(rng.uniform(0, 1, 400))}


def body(calibration: str | None, probability: float | None, ratio: float | None = None) -> dict:
    risk = None if calibration is None else {"probability": probability, "calibration": calibration}
    return {"risk": risk, "quadrant": None, "scores": {"probe_distance_ratio": ratio}}


def tracker(*calibrations: Params, window: int = 100) -> DriftTracker:
    served = list(calibrations)
    t = DriftTracker(window, 20, lambda: tuple(served))
    t.served = served  # the test swaps what is served
    return t


def test_a_shifted_window_drifts_and_a_like_one_does_not():
    t = tracker(Params(Path("a.json"), {"drift_reference": REFERENCE}), window=500)
    for p in rng.uniform(0, 1, 500):
        t.observe(body("a.json", float(p), float(p)))
    like = t.snapshot()["a.json"]
    assert set(like["risk"]) == {"ks", "p_value", "psi", "n_live", "n_reference"}
    assert like["risk"]["n_live"] == 500 and like["risk"]["n_reference"] == 400
    assert like["risk"]["ks"] < 0.2 and like["risk"]["psi"] < 0.25  # the alert thresholds
    for p in rng.uniform(0.7, 1, 300):  # riskier traffic: 300 of the 500 in the window
        t.observe(body("a.json", float(p), 3 * float(p)))
    shifted = t.snapshot()["a.json"]
    assert shifted["risk"]["n_live"] == 500  # the window keeps the last 500
    assert shifted["risk"]["ks"] > 0.3 and shifted["risk"]["psi"] > 0.5  # the CDFs differ by 0.42 at 0.7
    assert shifted["probe_distance_ratio"]["ks"] > 0.55  # ratios far above the reference's range


def test_reasons_when_drift_is_not_measured():
    old = Params(Path("old.json"), {"tau_hbar": 1.0})
    no_probe = Params(Path("np.json"), {"drift_reference": {"risk": REFERENCE["risk"]}})
    t = tracker(old, no_probe)
    for _ in range(5):
        t.observe(body("np.json", 0.5))
        t.observe(body("old.json", 0.5))
    snap = t.snapshot()
    assert snap["old.json"]["risk"] == {"n_live": 5, "n_reference": 0, "reason": NO_REFERENCE}
    assert snap["np.json"]["probe_distance_ratio"] == {"n_live": 0, "n_reference": 0, "reason": NO_PROBE}
    assert snap["np.json"]["risk"] == {"n_live": 5, "n_reference": 400,
                                       "reason": "5 live values; drift needs at least 20"}


def test_unassessed_responses_are_skipped_and_a_calibration_no_longer_served_is_forgotten():
    a, b = Params(Path("a.json"), {"drift_reference": REFERENCE}), Params(Path("b.json"), {})
    t = tracker(a, b)
    t.observe(body(None, None, 0.5))  # no calibration assessed it
    t.observe({"risk": None, "quadrant": {"params": "a.json"}, "scores": {"probe_distance_ratio": 0.4}})
    t.observe(body("a.json", float("nan"), None))  # non-finite values are not counted
    snap = t.snapshot()
    assert snap["a.json"]["risk"]["n_live"] == 0 and snap["a.json"]["probe_distance_ratio"]["n_live"] == 1
    t.served.remove(a)
    assert set(t.snapshot()) == {"b.json"}
    t.served.append(a)
    assert t.snapshot()["a.json"]["probe_distance_ratio"]["n_live"] == 0


def test_observe_and_snapshot_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor

    t = tracker(Params(Path("a.json"), {"drift_reference": REFERENCE}), window=1000)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: (t.observe(body("a.json", p, p)), t.snapshot()), rng.uniform(0, 1, 400)))
    assert t.snapshot()["a.json"]["risk"]["n_live"] == 400


@pytest.mark.parametrize("window", [10, 50])
def test_the_window_bounds_each_signal(window):
    t = tracker(Params(Path("a.json"), {"drift_reference": REFERENCE}), window=window)
    for p in rng.uniform(0, 1, 3 * window):
        t.observe(body("a.json", float(p), float(p)))
    snap = t.snapshot()["a.json"]
    assert snap["risk"]["n_live"] == snap["probe_distance_ratio"]["n_live"] == window


def test_window_drift_compares_the_logged_values_of_each_calibration():
    rng = np.random.default_rng(0)
    reference = {"risk": sorted(rng.uniform(size=400).round(5).tolist()),
                 "probe_distance_ratio": sorted(rng.uniform(0.5, 1.0, size=400).round(5).tolist())}
    mine, bare = Params(Path("a.json"), {"drift_reference": reference}), Params(Path("b.json"), {})
    rows = [{"calibration": "a.json", "risk": float(v), "distance_ratio": float(d)}
            for v, d in zip(rng.uniform(0.5, 1.0, size=300), rng.uniform(0.5, 1.0, size=300))]
    rows += [{"calibration": "a.json", "risk": None, "distance_ratio": None}]  # not assessed: left out
    drift = window_drift(rows, (mine, bare), min_live=200)
    assert drift["a.json"]["risk"]["n_live"] == 300 and drift["a.json"]["risk"]["ks"] > 0.3  # shifted up
    assert drift["a.json"]["probe_distance_ratio"]["ks"] < 0.15  # same distribution
    assert drift["b.json"]["risk"]["reason"] == NO_REFERENCE and drift["b.json"]["risk"]["n_live"] == 0
