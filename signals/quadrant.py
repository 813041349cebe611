"""Risk quadrants from calibrated thresholds (docs/signals.md, reference calibration protocol).

ℏₛ is inverted on the calibration data: a response is flagged by ℏₛ when ℏₛ ≤ τ_hbar,
and by PRI when PRI ≥ τ_pri.
"""

from dataclasses import dataclass

LABELS = {
    "Q1": "both OK: neither signal flags the response",
    "Q2": "both flag: ℏₛ and PRI both flag the response (highest risk)",
    "Q3": "PRI only: the response ruptures (PRI flags), ℏₛ does not",
    "Q4": "ℏₛ only: ℏₛ flags the response, PRI does not",
}


@dataclass(frozen=True)
class Thresholds:
    tau_hbar: float
    tau_pri: float


def quadrant(hbar_s: float, pri: float, t: Thresholds) -> str:
    """Name of the quadrant (Q1..Q4) of a response with these scores."""
    hbar_flag = hbar_s <= t.tau_hbar
    pri_flag = pri >= t.tau_pri
    if hbar_flag and pri_flag:
        return "Q2"
    if pri_flag:
        return "Q3"
    if hbar_flag:
        return "Q4"
    return "Q1"
