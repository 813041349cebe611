"""Calibrated params files: find the newest one for a model, load and check it."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from signals.quadrant import LABELS, Thresholds, quadrant


class ParamsError(ValueError):
    """A params file is missing, unreadable or lacks usable thresholds."""


@dataclass(frozen=True)
class Params:
    path: Path
    data: dict

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.data["tau_hbar"], self.data["tau_pri"])

    def summary(self) -> dict:
        """What responses and GET /model say about the params in effect."""
        return {
            "path": str(self.path),
            "model": self.data.get("model"),
            "source": self.data.get("source"),
            "tau_hbar": self.data["tau_hbar"],
            "tau_pri": self.data["tau_pri"],
        }


def load_params(path: Path) -> Params:
    """Read a params JSON file; its thresholds must be finite numbers."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ParamsError(f"cannot read params file {path}: {e}") from e
    for key in ("tau_hbar", "tau_pri"):
        v = data.get(key) if isinstance(data, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ParamsError(f"params file {path}: {key!r} must be a finite number")
    return Params(Path(path), data)


def _same_model(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a == b or a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]


def find_params(model_id: str, params_dir: Path) -> Params | None:
    """The newest params file in `params_dir` whose `model` matches `model_id` (or None).

    Newest means the largest `created_utc` (ISO-8601), then the file name.
    """
    found = []
    for path in sorted(Path(params_dir).glob("*.json")):
        try:
            p = load_params(path)
        except ParamsError:
            continue
        if _same_model(str(p.data.get("model", "")), model_id):
            found.append((str(p.data.get("created_utc", "")), path.name, p))
    return max(found, key=lambda t: t[:2])[2] if found else None


def quadrant_of(hbar_s: float, pri: float, params: Params) -> dict:
    """The response's `quadrant` object under these params."""
    name = quadrant(hbar_s, pri, params.thresholds)
    return {
        "name": name,
        "label": LABELS[name],
        "tau_hbar": params.data["tau_hbar"],
        "tau_pri": params.data["tau_pri"],
        "params": str(params.path.name),
    }
