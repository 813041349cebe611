"""The reference distributions that live drift is measured against (app/monitor/drift.py), stored
in the params by the calibration run under "drift_reference":

- "risk": the `risk` probability on the training split, out of fold: the scores the Platt scaling
  was fitted on (each sample scored by the risk's detector fitted in a CV fold without it), scaled;
  a detector's scores on its own training samples, a probe's above all, are more confident than on
  any new prompt;
- "probe_distance_ratio" (only with probes): each training state's distance ÷ the in-range limit
  of the calibration's range probe, as `scores.probe_distance_ratio` reports it for a response.

Both are sorted and rounded; beyond `MAX_VALUES` samples, evenly spaced order statistics stand
for them.
"""

import numpy as np

from signals import selection

MAX_VALUES = 2000
DECIMALS = 5


def compact(values) -> list[float]:
    """`values` sorted and rounded, at most `MAX_VALUES` of them (evenly spaced order statistics)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    if len(ordered) > MAX_VALUES:
        ordered = ordered[np.linspace(0, len(ordered) - 1, MAX_VALUES).round().astype(int)]
    return [round(float(v), DECIMALS) for v in ordered]


def drift_reference(chosen: dict, states: dict | None) -> dict:
    """The params' "drift_reference" from the detector selection (`selection.select_detectors`'
    result) and the training states it was fitted on (position → (n, L, D); None without probes)."""
    reference = {"risk": compact(selection.risk_probability(chosen["risk_scores"], chosen["risk"]))}
    position = selection.range_probe(chosen["ranking"], chosen["risk"]["detector"])
    if position is not None and states is not None:
        probe = chosen["probes"][position]
        reference["probe_distance_ratio"] = compact(probe.distance_in(states) / probe.distance_limit)
    return reference
