"""The monitor summary of a window of log entries: counts, flagged share per quadrant, risk
quantiles, in-distribution share, and the same per time bucket with the mean latency."""

import re
from datetime import UTC, datetime

import numpy as np

QUADRANTS = ("Q1", "Q2", "Q3", "Q4", "none")
COLUMNS = ["ts", "replica", "quadrant", "flagged", "risk", "in_distribution", "latency_s", "calibration",
           "distance_ratio"]
MAX_BUCKETS = 1000
MAX_WINDOW_S = 366 * 86400
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")


def parse_duration(text: str) -> float:
    """Seconds of '90s', '15m', '24h' or '7d'; ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 24h or 7d")
    return int(m[1]) * _UNITS[m[2]]


def parse_time(text: str, now: float) -> float:
    """UNIX seconds of an ISO 8601 time (UTC unless it says) or of a duration back from `now` ('24h')."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor a duration such as 24h") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _share(values: list) -> float | None:
    """Share of True among the values that are not None (None when there are none)."""
    known = [v for v in values if v is not None]
    return sum(map(bool, known)) / len(known) if known else None


def _quantiles(values: list, qs=(0.5, 0.9, 0.99)) -> dict | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return {f"p{round(q * 100)}": float(v) for q, v in zip(qs, np.quantile(known, qs))}


def _stats(rows: list) -> dict:
    return {"count": len(rows), "flagged_share": _share([r["flagged"] for r in rows]),
            "risk_quantiles": _quantiles([r["risk"] for r in rows]),
            "in_distribution_share": _share([r["in_distribution"] for r in rows])}


def summarize(rows, since: float, until: float, bucket_s: float, drift: dict | None = None) -> dict:
    """The summary of `rows` (dicts with COLUMNS, `since` ≤ ts < `until`); `drift`: the window's drift
    per calibration (app/monitor/drift.py `window_drift`), when there are calibrations to compare with."""
    rows = list(rows)
    n_buckets = max(1, int(np.ceil((until - since) / bucket_s)))
    per_bucket: list = [[] for _ in range(n_buckets)]
    for r in rows:
        per_bucket[min(int((r["ts"] - since) // bucket_s), n_buckets - 1)].append(r)
    replicas: dict = {}
    for r in rows:
        replicas[r["replica"]] = replicas.get(r["replica"], 0) + 1
    return {
        "since": iso(since), "until": iso(until), "bucket_s": bucket_s,
        **_stats(rows),
        "quadrants": {q: {"count": len(sel), "flagged_share": _share([r["flagged"] for r in sel])}
                      for q in QUADRANTS
                      for sel in [[r for r in rows if (r["quadrant"] or "none") == q]]},
        "replicas": replicas,
        "buckets": [{"start": iso(since + i * bucket_s), **_stats(b),
                     "mean_latency_s": float(np.mean([r["latency_s"] for r in b])) if b else None}
                    for i, b in enumerate(per_bucket)],
        "drift": drift,
    }
