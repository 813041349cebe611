"""The one rule for whether a finished response is flagged, shared by metrics, the log and alerts."""


def is_flagged(body: dict, risk_cutoff: float) -> bool | None:
    """True when the response's `risk` probability is at least `risk_cutoff`; without a risk, when both
    seed signals flag it (quadrant Q2); None when it was not assessed at all (no calibration)."""
    risk = body.get("risk")
    if risk is not None and risk.get("probability") is not None:
        return risk["probability"] >= risk_cutoff
    quadrant = body.get("quadrant")
    if quadrant is None:
        return None
    return quadrant["name"] == "Q2"
