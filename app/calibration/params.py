"""Calibrated params files: load and check them (and their probe), bind them to a model's
fingerprint, and decide which ones are served: the --params file, the activated calibration, or
the newest shipped params of that model."""

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path

from adapters.fingerprint import Fingerprint

from signals import detectors, selection
from signals.probe import Probe, ProbeError
from signals.quadrant import LABELS, Thresholds, quadrant

from ..storage import write_json_atomic
from .probe_files import load_probe

log = logging.getLogger("halluwatch.params")


class ParamsError(ValueError):
    """A params file is missing, unreadable or lacks usable thresholds."""


@dataclass(frozen=True)
class Params:
    path: Path
    data: dict
    probe: Probe | None = None  # the served probe (data["probe"] names its position)
    range_probe: Probe | None = None  # whose distance says if a request is in range (data["range_probe"])

    @property
    def probes(self) -> tuple:
        """The probes a job runs for these params: the served one, then the range one if another."""
        served = () if self.probe is None else (self.probe,)
        return served if self.range_probe is None or self.range_probe is self.probe else (*served, self.range_probe)

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.data["tau_hbar"], self.data["tau_pri"])

    def summary(self) -> dict:
        """What responses and GET /model say about the params in effect."""
        return {
            "path": str(self.path),
            "model": self.data.get("model"),
            "source": self.data.get("source"),
            "task": self.data.get("task"),  # the traffic it was calibrated on: a HaluEval task, or "answers"
            "tau_hbar": self.data["tau_hbar"],
            "tau_pri": self.data["tau_pri"],
            "risk_detector": (self.data.get("risk") or {}).get("detector"),
            "probe": _describe(self.probe),
            "range_probe": _describe(self.range_probe),
        }

    def risk(self, scores: dict, verdict: dict, probe_logit: float | None,
             probe_in_distribution: bool | None = None) -> dict | None:
        """The response's `risk`: the selected detector's Platt-scaled probability (None without a
        selection in these params, or without the probe logit a probe detector needs), and whether
        the request lies within the range of the calibration's training states (by its probe's
        distance, whichever detector gives the risk; None when the params have no probe)."""
        risk = self.data.get("risk")
        if not risk:
            return None
        feats = detectors.features(scores, verdict)
        if self.probe is not None and probe_logit is not None:
            feats[detectors.probe_for(self.probe.position).name] = probe_logit
        name = risk["detector"]
        detector = detectors.get(name)
        if not detector.available(feats, {}):
            return None
        score = selection.detector_score(name, feats, self.data["detectors"], self.data["joint_model_weights"])
        return {"probability": float(selection.risk_probability(score, risk)), "detector": name,
                "task": self.data.get("task"),
                "in_distribution": probe_in_distribution}


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
    probe = _probe(Path(path), data, data.get("probe"))
    # params of before the range probe: the served probe reads the range too
    ranged = data.get("range_probe", data.get("probe"))
    return Params(Path(path), data, probe, probe if ranged == data.get("probe") else _probe(Path(path), data, ranged))


def _describe(probe: Probe | None) -> dict | None:
    return None if probe is None else {"position": probe.position, "block": probe.layer + 1}


def _probe(path: Path, data: dict, position: str | None) -> Probe | None:
    """The params' probe at `position`, read from its file beside them and checked by SHA-256."""
    if position is None:
        return None
    try:
        entry = data["detectors"][detectors.probe_for(position).name]
        return load_probe(path.parent / entry["file"], entry["sha256"])
    except (KeyError, TypeError) as e:
        raise ParamsError(f"params file {path}: probe {position!r} has no file/sha256 entry ({e})") from e
    except ProbeError as e:
        raise ParamsError(f"params file {path}: {e}") from e


def check_model(params: Params, fp: Fingerprint) -> None:
    """Raise ParamsError (naming what differs) unless `params` were calibrated on the model `fp`
    and their probes fit its blocks and hidden size."""
    try:
        theirs = Fingerprint.from_dict(params.data.get("model_fingerprint"))
    except ValueError as e:
        raise ParamsError(f"params file {params.path}: no usable model fingerprint ({e}); "
                          "calibrate this model to get params bound to it") from None
    if (diff := fp.mismatch(theirs)) is not None:
        raise ParamsError(f"params file {params.path} was calibrated on another model ({diff})")
    for probe in params.probes:
        if probe.layer >= fp.blocks or probe.coef.size != fp.hidden_size:
            raise ParamsError(f"params file {params.path}: probe on block {probe.layer + 1} with hidden size "
                              f"{probe.coef.size} does not fit a model of {fp.blocks} blocks × {fp.hidden_size}")


def matching_params(fp: Fingerprint, params_dir: Path) -> tuple[list, list]:
    """The params files in `params_dir` calibrated on the model `fp`, newest first, and the files
    passed over, each as {"path", "reason"}. Newest: the largest `created_utc` (ISO-8601), then the name."""
    found, skipped = [], []
    for path in sorted(Path(params_dir).glob("*.json")):
        try:
            p = load_params(path)
            check_model(p, fp)
        except ParamsError as e:
            skipped.append({"path": str(path), "reason": str(e)})
            continue
        found.append((str(p.data.get("created_utc", "")), path.name, p))
    return [p for *_, p in sorted(found, key=lambda t: t[:2], reverse=True)], skipped


def find_params(fp: Fingerprint, params_dir: Path) -> tuple[Params | None, list]:
    """The newest params file in `params_dir` calibrated on the model `fp` (or None), and the files
    passed over."""
    found, skipped = matching_params(fp, params_dir)
    return (found[0] if found else None), skipped


def _pointers_path(state_dir: Path) -> Path:
    return Path(state_dir) / "active_calibrations.json"


def active_params_path(state_dir: Path, fp: Fingerprint) -> Path | None:
    """The params file activated for the model `fp`, if any."""
    try:
        entry = json.loads(_pointers_path(state_dir).read_text()).get(fp.id)
    except (OSError, ValueError, AttributeError):
        return None
    return Path(entry["params"]) if isinstance(entry, dict) and "params" in entry else None


def activate(state_dir: Path, params_path: Path, by: str) -> Fingerprint:
    """Make `params_path` the served calibration of the model it was calibrated on (from the next
    start, and at once in the server that ran the job); returns that model's fingerprint."""
    params = load_params(params_path)
    try:
        fp = Fingerprint.from_dict(params.data.get("model_fingerprint"))
    except ValueError as e:
        raise ParamsError(f"params file {params_path}: cannot be activated: {e}") from None
    path = _pointers_path(state_dir)
    try:
        pointers = json.loads(path.read_text())
    except (OSError, ValueError):
        pointers = {}
    pointers[fp.id] = {"params": str(Path(params_path).resolve()), "model": params.data.get("model"),
                       "set_utc": datetime.now(UTC).isoformat(timespec="seconds"), "by": by}
    write_json_atomic(path, pointers)
    log.info("activated %s for %s (%s)", params_path, params.data.get("model"), by)
    return fp


@dataclass(frozen=True)
class Served:
    """The calibrations in effect for a model: the default one (`params`), where it came from, the
    model's shipped calibrations for other kinds of traffic (`others`, the newest per task), and
    the files passed over. A request is assessed by the one whose probe's training states its own
    lie closest to, or by the one it names."""

    params: Params | None
    reason: str | None  # why there are none
    source: str | None  # "flag" (--params), "active" (activated calibration) or "shipped"
    skipped: tuple = ()  # ({"path", "reason"}, ...)
    others: tuple = ()

    @property
    def calibrations(self) -> tuple:
        """Every calibration a request may be assessed by, the default first."""
        return (self.params, *self.others) if self.params is not None else ()

    def choose(self, name: str | None) -> tuple:
        """The calibrations that may assess a request: all of them, or the one it names (KeyError)."""
        return self.calibrations if name is None else (self.named(name),)

    def named(self, name: str) -> Params:
        """The calibration called `name` (its task, e.g. "answers" or "qa", or its file name or
        stem); KeyError listing the names otherwise."""
        for params in self.calibrations:
            if name in (params.data.get("task"), params.path.name, params.path.stem):
                return params
        known = ", ".join(f"{p.data.get('task')} ({p.path.name})" for p in self.calibrations) or "none"
        raise KeyError(f"no calibration {name!r}; loaded: {known}")


def resolve(settings, fp: Fingerprint) -> Served:
    """What to serve for the model `fp`: the --params file alone (refused with ParamsError if it
    does not fit the model); else its activated calibration, else the newest matching shipped
    params, as the default, beside the newest shipped calibration of each other task."""
    if settings.params is not None:
        params = load_params(settings.params)
        check_model(params, fp)
        return Served(params, None, "flag")
    skipped, active = [], None
    if (path := active_params_path(settings.state_dir, fp)) is not None:
        try:
            active = load_params(path)
            check_model(active, fp)
        except ParamsError as e:
            skipped.append({"path": str(path), "reason": f"activated, but unusable: {e}"})
            active = None
    found, passed = matching_params(fp, settings.params_dir)
    skipped += passed
    for entry in skipped:
        log.warning("skipping %s", entry["reason"])
    if active is None and not found:
        return Served(None, f"no calibrated params for this model (fingerprint {fp.id}) in {settings.params_dir} "
                            "and none activated; run `halluwatch calibrate` or pass --params", None, tuple(skipped))
    default = active or found[0]
    others, tasks = [], {default.data.get("task")}
    for params in found:  # newest first: the newest calibration of each other task
        if (task := params.data.get("task")) not in tasks:
            tasks.add(task)
            others.append(params)
    return Served(default, None, "active" if active else "shipped", tuple(skipped), tuple(others))


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
