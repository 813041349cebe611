"""Params files for tests, bound to a loaded model by its fingerprint like calibrated ones."""

import json
from pathlib import Path


def params_for(lm, **fields) -> dict:
    """Minimal valid params of the loaded model `lm` (τ_hbar 1.0, τ_pri 4.0), with `fields` on top."""
    return {"model": lm.model_id, "model_fingerprint": lm.fingerprint.as_dict(), "tau_hbar": 1.0, "tau_pri": 4.0,
            "source": "test", "created_utc": "2026-01-01T00:00:00Z", **fields}


def other_model(lm, **changes) -> dict:
    """The fingerprint of a model like `lm` but different in `changes` (default: one more block)."""
    return {**lm.fingerprint.as_dict(), **(changes or {"blocks": lm.fingerprint.blocks + 1})}


def write_params(path: Path, lm, **fields) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(params_for(lm, **fields)))
    return path


# Fields of a calibration whose risk is PRI Platt-scaled, with a reference of 50 risk probabilities
# to measure drift against (and no probe, so no distance ratio).
DRIFT_CALIBRATION = {
    "detectors": {"pri": {"direction": 1}}, "ranking": ["pri"],
    "risk": {"detector": "pri", "a": 1.0, "b": -2.0, "cv_auroc": 0.7},
    "joint_model_weights": {"w_hbar": 0.0, "w_pri": 1.0, "intercept": 0.0},
    "drift_reference": {"risk": [i / 50 for i in range(50)]},
}
