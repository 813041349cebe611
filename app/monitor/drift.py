"""Live drift per served calibration: the risk probabilities and probe distance ratios of the last
N responses it assessed, against the reference its calibration run stored in the params
("drift_reference", app/calibration/drift_reference.py), by KS and PSI (signals/drift.py).

HTTP side only (no MLX): `observe` takes a finished response's /generate-shaped body; `snapshot`
is computed when asked (a scrape of /metrics, the monitor summary). A response is counted for the
calibration that assessed it (`risk.calibration`, else `quadrant.params`); its distance ratio is
that calibration's probe's. When several calibrations are served, each sees only the traffic it
was closest to, and its distance ratios lean low accordingly.
"""

import math
import threading
from collections import deque
from collections.abc import Callable

from signals.drift import compare

SIGNALS = ("risk", "probe_distance_ratio")
NO_REFERENCE = ("its params hold no drift reference (older calibrations, and those whose detector selection "
                "was skipped, have none); recalibrate to measure drift")
NO_PROBE = "its params serve no probe with an in-range limit, so there is no distance ratio"


class DriftTracker:
    """Rolling windows of the last `window` values of each signal per calibration (thread-safe)."""

    def __init__(self, window: int, min_live: int, calibrations: Callable[[], tuple]):
        self.window, self.min_live = window, min_live
        self._calibrations = calibrations  # the Params served now, read at each snapshot
        self._live: dict[str, dict[str, deque]] = {}
        self._lock = threading.Lock()

    def observe(self, body: dict) -> None:
        """Add a finished response's risk probability and probe distance ratio to its calibration's window."""
        risk = body.get("risk") or {}
        name = risk.get("calibration") or (body.get("quadrant") or {}).get("params")
        if name is None:  # not assessed: no calibration to compare with
            return
        values = {"risk": risk.get("probability"),
                  "probe_distance_ratio": (body.get("scores") or {}).get("probe_distance_ratio")}
        with self._lock:
            windows = self._live.setdefault(name, {s: deque(maxlen=self.window) for s in SIGNALS})
            for signal, value in values.items():
                if value is not None and math.isfinite(value):
                    windows[signal].append(float(value))

    def snapshot(self) -> dict:
        """{calibration file name: {signal: {"ks", "p_value", "psi", "n_live", "n_reference"}, or
        {"n_live", "n_reference", "reason"} when drift is not measured}} for every served calibration."""
        served = {params.path.name: params for params in self._calibrations()}
        with self._lock:
            for name in set(self._live) - set(served):  # a calibration no longer served: its window goes
                del self._live[name]
            live = {name: {s: list(d) for s, d in windows.items()} for name, windows in self._live.items()}
        return {name: {signal: measure(params.data.get("drift_reference"), signal,
                                       live.get(name, {}).get(signal, []), self.min_live)
                       for signal in SIGNALS}
                for name, params in served.items()}


def measure(reference: dict | None, signal: str, live: list, min_live: int) -> dict:
    """Drift of one signal's `live` values against a calibration's drift reference (`compare`), or the
    sizes and the reason it is not measured."""
    if not isinstance(reference, dict):
        return {"n_live": len(live), "n_reference": 0, "reason": NO_REFERENCE}
    if not reference.get(signal):
        return {"n_live": len(live), "n_reference": 0, "reason": NO_PROBE if signal != "risk" else NO_REFERENCE}
    return compare(live, reference[signal], min_live)


def window_drift(rows: list, calibrations: tuple, min_live: int) -> dict:
    """Drift over log entries (dicts with "calibration", "risk", "distance_ratio"), per served
    calibration and signal, as `DriftTracker.snapshot` gives it for its rolling window."""
    columns = {"risk": "risk", "probe_distance_ratio": "distance_ratio"}
    out = {}
    for params in calibrations:
        mine = [r for r in rows if r.get("calibration") == params.path.name]
        out[params.path.name] = {
            signal: measure(params.data.get("drift_reference"), signal,
                            [r[column] for r in mine if r[column] is not None and math.isfinite(r[column])], min_live)
            for signal, column in columns.items()}
    return out
