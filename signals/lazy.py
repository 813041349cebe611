"""The scikit-learn and SciPy names the fitting code uses, imported on first use.

Serving only applies fitted weights (NumPy); importing scikit-learn (with SciPy) costs a process
about 100 MB of resident memory and a second at start. So fitting code writes
`lazy.LogisticRegression`, `lazy.StratifiedKFold`, …, and the import happens when a calibration or a drift check first
needs it (PEP 562 module `__getattr__`).
"""

import importlib

_HOME = {
    "LogisticRegression": "sklearn.linear_model",
    "StandardScaler": "sklearn.preprocessing",
    "GridSearchCV": "sklearn.model_selection",
    "StratifiedKFold": "sklearn.model_selection",
    "cross_val_score": "sklearn.model_selection",
    "auc": "sklearn.metrics",
    "average_precision_score": "sklearn.metrics",
    "brier_score_loss": "sklearn.metrics",
    "precision_recall_curve": "sklearn.metrics",
    "roc_curve": "sklearn.metrics",
    "ks_2samp": "scipy.stats",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list:
    return sorted([*globals(), *_HOME])
