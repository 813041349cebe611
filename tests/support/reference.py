"""Independent numpy versions of the docs/signals.md formulas, for tests."""

import math

import mlx.core as mx
import numpy as np


def np_unit(h):
    return h / np.sqrt((h * h).sum(-1, keepdims=True) + 1e-8)


def reference(logits, hidden, token, prev_final, tau=2.0, lam=5.0):
    """docs/signals.md, written out in numpy (float64), from MLX's float32 softmax."""
    p = probs(logits)
    hidden = hidden.astype(np.float64)
    d_mu = 1 / math.sqrt(1 - (p * p).sum() + 0.01)
    u = np_unit(hidden)
    d_sigma = math.sqrt(((u - u.mean(0)) ** 2).sum(-1).mean())
    hbar = math.sqrt(d_mu * d_sigma)
    s = -math.log(max(p[token], 1e-10))
    d_h = 0.0 if prev_final is None else 1 - float(np.clip(np_unit(hidden[-1]) @ np_unit(prev_final), -1, 1))
    pri = s * (1 + 0.1 * d_h)
    pf = 1 / (1 + math.exp(-float(np.clip(lam * (hbar - tau), -50, 50))))
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return np.array([d_mu, d_sigma, hbar, s, d_h, pri, pf, entropy, p[token]])


def probs(logits):
    """MLX's float32 softmax as float64 numpy."""
    return np.array(mx.softmax(mx.array(logits, dtype=mx.float32), axis=-1)).astype(np.float64)
