"""signals/drift.py: KS and PSI of a live sample against a reference."""

import math

import numpy as np
import pytest

from signals.drift import PSI_EPSILON, compare, ks, psi, psi_edges


def test_same_distribution_is_stable_and_a_shift_is_not():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 2000)
    same, shifted = rng.normal(0, 1, 500), rng.normal(1, 1, 500)
    assert psi(same, reference) < 0.1
    assert ks(same, reference)[1] > 0.01
    assert psi(shifted, reference) > 0.25
    statistic, p_value = ks(shifted, reference)
    assert 0.3 < statistic < 0.5 and p_value < 1e-10  # the CDFs of N(0,1) and N(1,1) differ by at most 0.38


def test_psi_by_hand():
    reference = np.arange(10.0)  # deciles: one value per bin
    assert list(psi_edges(reference)) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    live = np.array([0.0, 0.0, 9.0, 9.0])  # half in the first bin, half in the last, the rest empty
    expected = 2 * (0.5 - 0.1) * math.log(0.5 / 0.1) + 8 * (PSI_EPSILON - 0.1) * math.log(PSI_EPSILON / 0.1)
    assert psi(live, reference) == pytest.approx(expected)


def test_values_beyond_the_reference_range_count_and_stay_finite():
    reference = np.linspace(0, 1, 100)
    far = np.full(50, 7.0)  # all in the open last bin
    value = psi(far, reference)
    assert math.isfinite(value) and value > 5
    assert ks(far, reference)[0] == 1.0


def test_a_reference_with_ties_has_fewer_bins():
    reference = np.array([0.0] * 80 + [1.0] * 20)
    assert list(psi_edges(reference)) == [0.0, 1.0]
    assert psi(reference, reference) == 0.0
    assert psi(np.ones(10), reference) > 0.25


def test_compare_reports_why_it_is_not_computed():
    reference = np.linspace(0, 1, 50)
    assert compare(np.ones(3), reference, min_live=5) == {
        "n_live": 3, "n_reference": 50, "reason": "3 live values; drift needs at least 5"}
    assert compare(np.ones(10), [], min_live=5)["reason"] == "the reference sample is empty"
    result = compare(np.linspace(0, 1, 40), reference, min_live=5)
    assert set(result) == {"n_live", "n_reference", "ks", "p_value", "psi"}
    assert result["n_live"] == 40 and result["ks"] < 0.1 and result["psi"] < 0.1
