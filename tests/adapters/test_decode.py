"""The log-probabilities the signals get: the decoder's own in float32, recomputed in float32 otherwise."""

import mlx.core as mx
import numpy as np

from adapters.decode import float32_logprobs


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) + x.max(-1, keepdims=True))


def test_float32_logits_reuse_the_decoders_logprobs():
    logits = mx.array(np.random.default_rng(0).standard_normal((2, 50)).astype(np.float32))
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    assert float32_logprobs(logits, logprobs) is logprobs


def test_half_precision_logits_get_float32_logprobs_not_the_decoders():
    raw = np.random.default_rng(1).standard_normal((2, 50)).astype(np.float32) * 8
    for dtype in (mx.float16, mx.bfloat16):
        logits = mx.array(raw).astype(dtype)
        coarse = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # what the decoder has, in `dtype`
        got = float32_logprobs(logits, coarse)
        assert got.dtype == mx.float32
        want = _log_softmax(np.array(logits.astype(mx.float32)))
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-5)
        assert np.abs(np.array(coarse.astype(mx.float32)) - want).max() > 1e-3  # the decoder's would be worse
