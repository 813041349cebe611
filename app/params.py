"""Calibrated params files: find the newest one for a model, load and check it (and its probe)."""

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from signals import selection
from signals.probe import Probe, ProbeError
from signals.quadrant import LABELS, Thresholds, quadrant

from .probes import load_probe

log = logging.getLogger("halluwatch.params")


class ParamsError(ValueError):
    """A params file is missing, unreadable or lacks usable thresholds."""


@dataclass(frozen=True)
class Params:
    path: Path
    data: dict
    probe: Probe | None = None  # the served probe (data["probe"] names its position)

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
            "risk_detector": (self.data.get("risk") or {}).get("detector"),
            "probe": None if self.probe is None else {"position": self.probe.position, "block": self.probe.layer + 1},
        }

    def risk(self, scores: dict, verdict: dict, probe_logit: float | None,
             probe_in_distribution: bool | None = None) -> dict | None:
        """The response's `risk`: the selected detector's Platt-scaled probability (None without a
        selection in these params, or without the probe logit a probe detector needs), and for a
        probe whether its input lies within the training states' range."""
        risk = self.data.get("risk")
        if not risk:
            return None
        feats = selection.features(scores, verdict)
        if self.probe is not None and probe_logit is not None:
            feats[selection.probe_name(self.probe.position)] = probe_logit
        name = risk["detector"]
        if name != "joint" and name not in feats:
            return None
        score = selection.detector_score(name, feats, self.data["detectors"], self.data["joint_model_weights"])
        return {"probability": float(selection.risk_probability(score, risk)), "detector": name,
                "task": self.data.get("task"),
                "in_distribution": probe_in_distribution if name.startswith(selection.PROBE) else None}


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
    return Params(Path(path), data, _probe(Path(path), data))


def _probe(path: Path, data: dict) -> Probe | None:
    """The probe the params serve, read from its file beside them and checked by SHA-256."""
    position = data.get("probe")
    if position is None:
        return None
    try:
        entry = data["detectors"][selection.probe_name(position)]
        return load_probe(path.parent / entry["file"], entry["sha256"])
    except (KeyError, TypeError) as e:
        raise ParamsError(f"params file {path}: probe {position!r} has no file/sha256 entry ({e})") from e
    except ProbeError as e:
        raise ParamsError(f"params file {path}: {e}") from e


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
        except ParamsError as e:
            log.warning("skipping %s", e)
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
