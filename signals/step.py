"""Per-step signals of docs/signals.md, as lazy MLX array expressions.

Every function reduces over the last axis (vocabulary or hidden size) and keeps any leading
batch axes, so the same code serves one sequence or a batch. All inputs are cast to float32
first: the reductions must not run in the model's activation dtype.
"""

import math

import mlx.core as mx

GINI_EPS = 0.01
NORM_EPS = 1e-8
PROB_FLOOR = 1e-10
LOG_PROB_FLOOR = math.log(PROB_FLOOR)
PRI_ALPHA = 0.1
PFAIL_CLIP = 50.0


def unit_vectors(h: mx.array) -> mx.array:
    """`h / sqrt(‖h‖² + 1e-8)` along the last axis."""
    h = h.astype(mx.float32)
    return h / mx.sqrt(mx.sum(h * h, axis=-1, keepdims=True) + NORM_EPS)


def delta_mu(probs: mx.array) -> mx.array:
    """Precision proxy Δμ = 1 / sqrt(Gini + 0.01), Gini = 1 − Σ p²."""
    gini = 1.0 - mx.sum(probs * probs, axis=-1)
    return mx.rsqrt(gini + GINI_EPS)


def delta_sigma(hidden: mx.array) -> mx.array:
    """Flexibility proxy Δσ: RMS distance of the per-block unit vectors from their mean.

    `hidden` has shape (..., L, D): the last-position output of each of the L blocks.
    """
    return _spread(unit_vectors(hidden))


def _spread(u: mx.array) -> mx.array:
    """Δσ of the unit vectors `u` (..., L, D): sqrt of the mean over L of ‖u − mean(u)‖²."""
    dev = u - mx.mean(u, axis=-2, keepdims=True)
    return mx.sqrt(mx.sum(dev * dev, axis=(-2, -1)) * (1.0 / u.shape[-2]))


def entropy(probs: mx.array, logprobs: mx.array) -> mx.array:
    """Token entropy −Σ p ln max(p, 1e-10), given ln p (no logarithm per token: 0 · ln 0 = 0)."""
    return -mx.sum(probs * mx.maximum(logprobs, LOG_PROB_FLOOR), axis=-1)


def mass(probs: mx.array, ids: mx.array) -> mx.array:
    """Probability mass on the token ids `ids`."""
    return mx.sum(mx.take(probs, ids, axis=-1), axis=-1)


def hbar_s(d_mu: mx.array, d_sigma: mx.array) -> mx.array:
    """Semantic uncertainty ℏₛ = sqrt(Δμ · Δσ)."""
    return mx.sqrt(d_mu * d_sigma)


def surprise(logprobs: mx.array, token: mx.array) -> mx.array:
    """S = −ln max(p[token], 1e-10), given ln p; `token` has the leading shape of `logprobs`."""
    return _surprise(token_logprob(logprobs, token))


def token_logprob(logprobs: mx.array, token: mx.array) -> mx.array:
    """ln p[token] along the last axis; `token` has the leading shape of `logprobs`."""
    return mx.take_along_axis(logprobs, token[..., None], axis=-1)[..., 0]


def _surprise(token_lp: mx.array) -> mx.array:
    return -mx.maximum(token_lp, LOG_PROB_FLOOR)


def delta_h(h_last: mx.array, h_prev: mx.array) -> mx.array:
    """Hidden jump Δh = 1 − clip(cos(h_t, h_{t−1}), −1, 1) of the final hidden states."""
    return _jump(unit_vectors(h_last), unit_vectors(h_prev))


def _jump(u: mx.array, v: mx.array) -> mx.array:
    """Δh of unit vectors: 1 − clip(u · v, −1, 1)."""
    return 1.0 - mx.clip(mx.sum(u * v, axis=-1), -1.0, 1.0)


def pri(s: mx.array, d_h: mx.array, alpha: float = PRI_ALPHA) -> mx.array:
    """Predictive Rupture Index PRI = S · (1 + α · Δh)."""
    return s * (1.0 + alpha * d_h)


def pfail(hbar: mx.array, tau: float, lam: float) -> mx.array:
    """Failure probability 1 / (1 + exp(−clip(λ(ℏₛ − τ), −50, 50)))."""
    return mx.sigmoid(mx.clip(lam * (hbar - tau), -PFAIL_CLIP, PFAIL_CLIP))


def probe_values(h: mx.array, mean: mx.array, scale: mx.array, coef: mx.array, intercept: float) -> mx.array:
    """A linear probe on one block's output, stacked on a new last axis: its logit
    z · coef + intercept and the RMS of z, where z = (h − mean) / scale (signals/probe.py)."""
    z = (h.astype(mx.float32) - mean) / scale
    return mx.stack([z @ coef + intercept, mx.sqrt(mx.mean(z * z, axis=-1))], axis=-1)


# Order of the values in the array returned by `step_signals`: the prototype's signals, then
# baselines (token entropy, probability of the chosen token), then optionally VERDICT_FIELDS.
STEP_FIELDS = ("delta_mu", "delta_sigma", "hbar_s", "surprise", "delta_h", "pri", "pfail", "entropy", "prob")
VERDICT_FIELDS = ("p_yes", "p_no")


def step_signals(logprobs, hidden, token, prev_final, tau: float, lam: float, verdict_ids=None) -> mx.array:
    """All per-step signals of one step, stacked on a new last axis in STEP_FIELDS order.

    logprobs: (..., V) log-softmax of the logits that chose `token` (the logits less their
    logsumexp, as the decoder computes them anyway: p is one exp of them, and ln p needs no
    logarithm over the vocabulary); hidden: (..., L, D) block outputs at the last
    position; prev_final: (..., D) final hidden state of the previous step, or None at
    step 0 (Δh_0 = 0; in a batch, a row of zeros marks a sequence at its step 0);
    verdict_ids: optional (yes ids, no ids) whose probability masses are appended
    (VERDICT_FIELDS).
    """
    logprobs = logprobs.astype(mx.float32)
    probs = mx.exp(logprobs)
    u = unit_vectors(hidden)  # once, for Δσ and Δh
    d_mu = delta_mu(probs)
    d_sigma = _spread(u)
    hbar = hbar_s(d_mu, d_sigma)
    chosen = token_logprob(logprobs, token)
    s = _surprise(chosen)
    if prev_final is None:  # Δh_0 = 0
        d_h = mx.zeros_like(s)
    else:
        d_h = mx.where(mx.any(prev_final != 0, axis=-1), _jump(u[..., -1, :], unit_vectors(prev_final)), 0.0)
    values = [d_mu, d_sigma, hbar, s, d_h, pri(s, d_h), pfail(hbar, tau, lam), entropy(probs, logprobs),
              mx.exp(chosen)]
    if verdict_ids is not None:
        values += [mass(probs, ids) for ids in verdict_ids]
    return mx.stack(values, axis=-1)
