"""AUROC as a rank statistic (signals/ranking.py) against scikit-learn's."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from signals.ranking import auroc


@pytest.mark.parametrize("levels", [3, 20, None])  # heavy ties, some ties, continuous scores
@pytest.mark.parametrize("weighted", [False, True])
def test_auroc_equals_scikit_learns_with_ties_and_weights(levels, weighted):
    rng = np.random.default_rng(levels or 0)
    for n in (7, 50, 333):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = rng.integers(0, levels, n).astype(float) if levels else rng.normal(size=n)
        weight = rng.uniform(0.1, 3.0, n) if weighted else None
        assert auroc(labels, scores, weight) == pytest.approx(roc_auc_score(labels, scores, sample_weight=weight),
                                                              abs=1e-12)
        assert auroc(labels, -scores, weight) == pytest.approx(1 - auroc(labels, scores, weight), abs=1e-12)


def test_auroc_refuses_one_class_and_non_finite_scores():
    with pytest.raises(ValueError, match="one class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one class"):
        auroc([0, 1, 1], [0.1, 0.2, 0.3], sample_weight=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1, 1], [0.1, float("nan"), 0.3])
