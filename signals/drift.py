"""Drift of a live sample against a reference sample: the two-sample Kolmogorov–Smirnov
statistic (scipy) and the population stability index (PSI).

PSI = Σ (live − ref) · ln(live / ref) over bins, where `ref` and `live` are the shares of each
sample in the bins. The bins are cut at reference values, its `PSI_BINS`-quantiles (equal-mass
bins; fewer when the reference has ties), each bin closed on the right, the outer ones open, so
live values beyond the reference's range still count. An empty bin would make the log infinite:
every share is floored at `PSI_EPSILON` first. Rule of thumb: below 0.1 stable, 0.1–0.25 a
moderate shift, above 0.25 a significant one.
"""

import numpy as np

from signals import lazy

PSI_BINS = 10
PSI_EPSILON = 1e-4  # floor of a bin's share: one empty bin adds about (share) · ln(share / 1e-4), not ∞


def ks(live, reference) -> tuple[float, float]:
    """(KS statistic, two-sided p-value): the largest gap between the two empirical CDFs."""
    result = lazy.ks_2samp(np.asarray(live, dtype=float), np.asarray(reference, dtype=float))
    return float(result.statistic), float(result.pvalue)


def psi_edges(reference, bins: int = PSI_BINS) -> np.ndarray:
    """The inner bin edges: the reference's interior quantiles (reference values), without repeats."""
    ordered = np.sort(np.asarray(reference, dtype=float))
    k = np.arange(1, bins)
    return np.unique(ordered[-(-k * len(ordered) // bins) - 1])  # the ⌈k·n/bins⌉-th smallest value


def psi(live, reference, bins: int = PSI_BINS, epsilon: float = PSI_EPSILON) -> float:
    """The population stability index of `live` against `reference` (see the module docstring)."""
    edges = psi_edges(reference, bins)
    shares = []
    for sample in (np.asarray(live, dtype=float), np.asarray(reference, dtype=float)):
        counts = np.bincount(np.searchsorted(edges, sample, side="left"), minlength=len(edges) + 1)
        shares.append(np.maximum(counts / len(sample), epsilon))
    live_share, ref_share = shares
    return float(np.sum((live_share - ref_share) * np.log(live_share / ref_share)))


def compare(live, reference, min_live: int) -> dict:
    """KS statistic, p-value and PSI of `live` against `reference`, with both sizes; or, with fewer
    than `min_live` live values or an empty reference, the sizes and the reason it is not computed."""
    live, reference = np.asarray(live, dtype=float), np.asarray(reference, dtype=float)
    out = {"n_live": int(len(live)), "n_reference": int(len(reference))}
    if len(reference) == 0:
        return {**out, "reason": "the reference sample is empty"}
    if len(live) < min_live:
        return {**out, "reason": f"{len(live)} live values; drift needs at least {min_live}"}
    statistic, p_value = ks(live, reference)
    return {**out, "ks": statistic, "p_value": p_value, "psi": psi(live, reference)}
