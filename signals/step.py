"""Per-step signals of docs/signals.md, in two parts.

`step_reductions` is the part that needs the model's arrays: lazy MLX expressions that reduce over
the vocabulary (`vocab_reductions`) and the block outputs (`state_reductions`), computed with the
step on the device. `finish` is the rest: per-row arithmetic that turns those few numbers into the
signals. The engine runs it with NumPy on the host, once per step for the whole batch (some thirty
tiny device operations per step fewer); `step_signals` runs both lazily in MLX. `step_reductions`
also runs in NumPy: where MLX computes on the CPU, its `exp` is element by element, ~20× slower
than NumPy's vectorised one, and each of its small operations over the block outputs costs more
than the NumPy twin, so there the engine takes a step's logits and block outputs to the host and
makes their log-softmax and these reductions in NumPy.
Every function keeps any leading batch axes, so the same code serves one sequence or a batch. The
reductions cast their inputs to float32 first: they must not run in the model's activation dtype.
"""

import math

import mlx.core as mx
import numpy as np

GINI_EPS = 0.01
NORM_EPS = 1e-8
PROB_FLOOR = 1e-10
LOG_PROB_FLOOR = math.log(PROB_FLOOR)
PRI_ALPHA = 0.1
PFAIL_CLIP = 50.0


def unit_vectors(h: mx.array) -> mx.array:
    """`h / sqrt(‖h‖² + 1e-8)` along the last axis."""
    xp = _xp(h)
    h = h.astype(xp.float32)
    return h / xp.sqrt(xp.sum(h * h, axis=-1, keepdims=True) + NORM_EPS)


def _xp(x):
    """The array library of `x`: NumPy for host values, else MLX."""
    return np if isinstance(x, np.ndarray) else mx


def delta_mu(probs: mx.array) -> mx.array:
    """Precision proxy Δμ = 1 / sqrt(Gini + 0.01), Gini = 1 − Σ p²."""
    return _precision(mx.sum(probs * probs, axis=-1))


def _precision(sum_p2):
    return 1.0 / _xp(sum_p2).sqrt(1.0 - sum_p2 + GINI_EPS)


def delta_sigma(hidden: mx.array) -> mx.array:
    """Flexibility proxy Δσ: RMS distance of the per-block unit vectors from their mean.

    `hidden` has shape (..., L, D): the last-position output of each of the L blocks.
    """
    return mx.sqrt(_spread2(unit_vectors(hidden)))


def _spread2(u: mx.array) -> mx.array:
    """Δσ² of the unit vectors `u` (..., L, D): the mean over L of ‖u − mean(u)‖²."""
    xp = _xp(u)
    dev = u - xp.mean(u, axis=-2, keepdims=True)
    return xp.sum(dev * dev, axis=(-2, -1)) * (1.0 / u.shape[-2])


def entropy(probs: mx.array, logprobs: mx.array) -> mx.array:
    """Token entropy −Σ p ln max(p, 1e-10), given ln p (no logarithm per token: 0 · ln 0 = 0)."""
    return -_p_log_p(probs, logprobs)


def _p_log_p(probs, logprobs):
    xp = _xp(probs)
    return xp.sum(probs * xp.maximum(logprobs, LOG_PROB_FLOOR), axis=-1)


def mass(probs, ids):
    """Probability mass on the token ids `ids`."""
    xp = _xp(probs)
    return xp.sum(xp.take(probs, ids, axis=-1), axis=-1)


def hbar_s(d_mu: mx.array, d_sigma: mx.array) -> mx.array:
    """Semantic uncertainty ℏₛ = sqrt(Δμ · Δσ)."""
    return _xp(d_mu).sqrt(d_mu * d_sigma)


def surprise(logprobs: mx.array, token: mx.array) -> mx.array:
    """S = −ln max(p[token], 1e-10), given ln p; `token` has the leading shape of `logprobs`."""
    return _surprise(token_logprob(logprobs, token))


def token_logprob(logprobs, token):
    """ln p[token] along the last axis; `token` has the leading shape of `logprobs`."""
    return _xp(logprobs).take_along_axis(logprobs, token[..., None], axis=-1)[..., 0]


def _surprise(token_lp):
    return -_xp(token_lp).maximum(token_lp, LOG_PROB_FLOOR)


def delta_h(h_last: mx.array, h_prev: mx.array) -> mx.array:
    """Hidden jump Δh = 1 − clip(cos(h_t, h_{t−1}), −1, 1) of the final hidden states."""
    return _jump(_cos(unit_vectors(h_last), unit_vectors(h_prev)))


def _cos(u: mx.array, v: mx.array) -> mx.array:
    return _xp(u).sum(u * v, axis=-1)


def _jump(cos):
    return 1.0 - _xp(cos).clip(cos, -1.0, 1.0)


def pri(s: mx.array, d_h: mx.array, alpha: float = PRI_ALPHA) -> mx.array:
    """Predictive Rupture Index PRI = S · (1 + α · Δh)."""
    return s * (1.0 + alpha * d_h)


def pfail(hbar: mx.array, tau: float, lam: float) -> mx.array:
    """Failure probability 1 / (1 + exp(−clip(λ(ℏₛ − τ), −50, 50)))."""
    xp = _xp(hbar)
    return 1.0 / (1.0 + xp.exp(-xp.clip(lam * (hbar - tau), -PFAIL_CLIP, PFAIL_CLIP)))


def probe_values(h: mx.array, mean: mx.array, scale: mx.array, coef: mx.array, intercept: float) -> mx.array:
    """A linear probe on one block's output, stacked on a new last axis: its logit
    z · coef + intercept and the RMS of z, where z = (h − mean) / scale (signals/probe.py)."""
    z = (h.astype(mx.float32) - mean) / scale
    return mx.stack([z @ coef + intercept, mx.sqrt(mx.mean(z * z, axis=-1))], axis=-1)


# Order of the values in the array returned by `step_signals` (and `finish`): the prototype's
# signals, then baselines (token entropy, probability of the chosen token), then optionally
# VERDICT_FIELDS.
STEP_FIELDS = ("delta_mu", "delta_sigma", "hbar_s", "surprise", "delta_h", "pri", "pfail", "entropy", "prob")
VERDICT_FIELDS = ("p_yes", "p_no")
# Order of the values in the array returned by `step_reductions`, then optionally the verdict masses:
# Σ p², Σ p·ln max(p, 1e-10), ln p[token] (`vocab_reductions`), Δσ², cos(h_t, h_{t−1}), 1 where
# there is a previous step (`state_reductions`).
VOCAB_FIELDS = ("sum_p2", "p_log_p", "token_logprob")
STATE_FIELDS = ("delta_sigma2", "cos_prev", "has_prev")
RAW_FIELDS = VOCAB_FIELDS + STATE_FIELDS


def vocab_reductions(logprobs, token, verdict_ids=None):
    """The reductions over the vocabulary of float32 log-probabilities (MLX, or NumPy on the host),
    on a new last axis: VOCAB_FIELDS, then the verdict masses if `verdict_ids`."""
    xp = _xp(logprobs)
    probs = xp.exp(logprobs)
    values = [xp.sum(probs * probs, axis=-1), _p_log_p(probs, logprobs), token_logprob(logprobs, token)]
    if verdict_ids is not None:
        values += [mass(probs, ids) for ids in verdict_ids]
    return xp.stack(values, axis=-1)


def state_reductions(hidden, prev_final):
    """The reductions over the block outputs (MLX, or NumPy on the host), on a new last axis in
    STATE_FIELDS order."""
    xp = _xp(hidden)
    u = unit_vectors(hidden)  # once, for Δσ and Δh
    if prev_final is None:  # Δh_0 = 0
        cos = has_prev = xp.zeros(hidden.shape[:-2], xp.float32)
    else:
        cos = _cos(u[..., -1, :], unit_vectors(prev_final))
        has_prev = xp.any(prev_final != 0, axis=-1).astype(xp.float32)
    return xp.stack([_spread2(u), cos, has_prev], axis=-1)


def join_reductions(vocab, rest):
    """`step_reductions`' values from `vocab_reductions`' and `rest` (`state_reductions`', then
    whatever a caller appended): VOCAB_FIELDS, STATE_FIELDS, the verdict masses, the appended values."""
    xp, n = _xp(vocab), len(VOCAB_FIELDS)
    return xp.concatenate([vocab[..., :n], rest[..., :len(STATE_FIELDS)], vocab[..., n:],
                           rest[..., len(STATE_FIELDS):]], axis=-1)


def step_reductions(logprobs, hidden, token, prev_final, verdict_ids=None):
    """A step's reductions over the vocabulary and the block outputs, stacked on a new last axis
    in RAW_FIELDS order, then the verdict masses if `verdict_ids` (see `step_signals`); in MLX,
    or in NumPy on the host."""
    return join_reductions(vocab_reductions(logprobs.astype(_xp(logprobs).float32), token, verdict_ids),
                           state_reductions(hidden, prev_final))


def finish(raw, tau: float, lam: float):
    """The signals from `step_reductions`' values `raw` (..., R): STEP_FIELDS, then the values
    after RAW_FIELDS as they are (the verdict masses, and whatever a caller appended). `raw` is
    a NumPy array (on the host) or an MLX one (lazily)."""
    xp = _xp(raw)
    sum_p2, p_log_p, token_lp, spread2, cos, has_prev = (raw[..., i] for i in range(len(RAW_FIELDS)))
    d_mu, d_sigma = _precision(sum_p2), xp.sqrt(spread2)
    hbar = hbar_s(d_mu, d_sigma)
    s = _surprise(token_lp)
    d_h = xp.where(has_prev > 0, _jump(cos), 0.0)
    values = [d_mu, d_sigma, hbar, s, d_h, pri(s, d_h), pfail(hbar, tau, lam), -p_log_p, xp.exp(token_lp)]
    return xp.concatenate([xp.stack(values, axis=-1), raw[..., len(RAW_FIELDS):]], axis=-1)


def step_signals(logprobs, hidden, token, prev_final, tau: float, lam: float, verdict_ids=None) -> mx.array:
    """All per-step signals of one step, stacked on a new last axis in STEP_FIELDS order
    (lazily: `finish` of `step_reductions` in MLX).

    logprobs: (..., V) log-softmax of the logits that chose `token` (the logits less their
    logsumexp, as the decoder computes them anyway: p is one exp of them, and ln p needs no
    logarithm over the vocabulary); hidden: (..., L, D) block outputs at the last
    position; prev_final: (..., D) final hidden state of the previous step, or None at
    step 0 (Δh_0 = 0; in a batch, a row of zeros marks a sequence at its step 0);
    verdict_ids: optional (yes ids, no ids) whose probability masses are appended
    (VERDICT_FIELDS).
    """
    return finish(step_reductions(logprobs, hidden, token, prev_final, verdict_ids), tau, lam)
