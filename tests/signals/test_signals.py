"""The formulas of signals/ against direct numpy computations (float64 after a float32 softmax)."""

import math

import mlx.core as mx
import numpy as np
import pytest

from signals import step
from signals.quadrant import Thresholds, quadrant
from signals.response import response_scores, top_k_mean

from support.reference import reference

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("with_prev", [False, True])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_step_signals_match_numpy(with_prev, scale):
    logits = (RNG.standard_normal(1000) * scale).astype(np.float32)
    hidden = (RNG.standard_normal((6, 48)) * np.linspace(1, 400, 6)[:, None]).astype(np.float32)
    prev = RNG.standard_normal(48).astype(np.float32) if with_prev else None
    token = int(np.argmax(logits))
    x = mx.array(logits)[None]
    got = step.step_signals(x - mx.logsumexp(x, axis=-1, keepdims=True), mx.array(hidden)[None], mx.array([token]),
                            None if prev is None else mx.array(prev)[None], 2.0, 5.0)
    assert got.shape == (1, len(step.STEP_FIELDS))
    np.testing.assert_allclose(np.array(got[0]), reference(logits, hidden, token, prev), rtol=1e-5, atol=1e-12)


def test_reductions_run_in_float32():
    # float16 would overflow: 400² · 48 > 65504, making the unit vectors zero.
    hidden = mx.array(RNG.standard_normal((6, 48)) * 400, dtype=mx.float16)
    d_sigma = step.delta_sigma(hidden)
    assert d_sigma.dtype == mx.float32
    ref = reference(np.zeros(4, np.float32), np.array(hidden.astype(mx.float32)), 0, None)[1]
    assert float(d_sigma) == pytest.approx(ref, rel=1e-5)


def test_surprise_floor_and_batch():
    probs = mx.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    s = step.surprise(mx.log(probs), mx.array([2, 0]))  # ln 0 = -inf: the floor
    assert s.tolist() == pytest.approx([-math.log(1e-10), 0.0])


def test_delta_h_extremes():
    h = mx.array([[1.0, 2.0, 3.0]])
    assert float(step.delta_h(h, h)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(step.delta_h(h, -h)[0]) == pytest.approx(2.0, abs=1e-6)


def test_pfail_clip():
    assert float(step.pfail(mx.array(1e6), 2.0, 5.0)) == 1.0
    assert float(step.pfail(mx.array(-1e6), 2.0, 5.0)) == pytest.approx(1 / (1 + math.exp(50)))
    assert float(step.pfail(mx.array(2.0), 2.0, 5.0)) == 0.5


def test_top_k_mean():
    assert top_k_mean([1.0, 9.0, 3.0]) == pytest.approx(13 / 3)
    assert top_k_mean([1, 2, 3, 4, 5, 6, 7]) == pytest.approx((3 + 4 + 5 + 6 + 7) / 5)
    assert top_k_mean([2.0]) == 2.0
    with pytest.raises(ValueError):
        top_k_mean([])


def test_response_scores():
    from types import SimpleNamespace as Step

    steps = [Step(hbar_s=h, pri=0.5, pfail=f, surprise=u, entropy=e, prob=p)
             for h, f, u, e, p in zip([1, 2, 3, 4, 5, 6], [0.1, 0.7, 0.2, 0, 0, 0], [1, 3, 2, 0, 0, 0],
                                      [0.5, 1.5, 1, 1, 1, 1], [0.9, 0.2, 0.5, 1, 1, 1])]
    s = response_scores(steps)
    assert (s.hbar_s, s.pri, s.pfail_max) == (4.0, 0.5, 0.7)
    assert (s.surprise_mean, s.surprise_max, s.entropy_mean, s.entropy_max, s.prob_min) == (1.0, 3, 1.0, 1.5, 0.2)
    with pytest.raises(ValueError):
        response_scores([])


def test_entropy_and_mass():
    p = mx.array([[0.5, 0.25, 0.25, 0.0]])
    assert float(step.entropy(p, mx.log(p))[0]) == pytest.approx(1.5 * math.log(2))  # 0 · ln 0 = 0
    assert float(step.mass(p, mx.array([1, 3]))[0]) == 0.25


@pytest.mark.parametrize("hbar,pri,expected", [
    (3.0, 0.5, "Q1"),  # ℏₛ above τ, PRI below τ
    (2.0, 1.0, "Q2"),  # both on their thresholds: both flag
    (3.0, 1.0, "Q3"),
    (1.0, 0.5, "Q4"),
])
def test_quadrant(hbar, pri, expected):
    assert quadrant(hbar, pri, Thresholds(tau_hbar=2.0, tau_pri=1.0)) == expected


def test_finish_on_the_host_matches_step_signals():
    """The engine's split (reductions on the device, `finish` in NumPy) gives step_signals' values;
    a zero row of prev_final is a row at its step 0; columns after the reductions pass through."""
    x = mx.array((RNG.standard_normal((3, 500)) * [[1.0], [8.0], [30.0]]).astype(np.float32))
    logprobs = x - mx.logsumexp(x, axis=-1, keepdims=True)
    hidden = mx.array(RNG.standard_normal((3, 5, 32)).astype(np.float32))
    prev = mx.array(RNG.standard_normal((3, 32)).astype(np.float32)) * mx.array([[1.0], [0.0], [1.0]])
    token, verdict = mx.array([3, 0, 499]), (mx.array([1, 2]), mx.array([7]))
    for p in (None, prev):
        raw = step.step_reductions(logprobs, hidden, token, p, verdict)
        extra = mx.array([[0.5], [-1.0], [2.0]])
        got = step.finish(np.array(mx.concatenate([raw, extra], axis=-1)).astype(np.float64), 2.0, 5.0)
        want = np.array(step.step_signals(logprobs, hidden, token, p, 2.0, 5.0, verdict))
        assert isinstance(got, np.ndarray) and got.shape == (3, len(step.STEP_FIELDS) + 3)
        np.testing.assert_allclose(got[:, :-1], want, rtol=1e-5, atol=1e-7)
        assert got[:, -1].tolist() == [0.5, -1.0, 2.0]
    assert got[1, step.STEP_FIELDS.index("delta_h")] == 0.0 and got[0, step.STEP_FIELDS.index("delta_h")] > 0
