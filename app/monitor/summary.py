"""The monitor summary of a window of log entries: counts, flagged share per quadrant, risk
quantiles, in-distribution share, and the same per time bucket with the mean latency. Counts,
shares and latency sums come from SQL (`Store.bucket_counts`); the risk quantiles (and the drift)
from the window's newest SAMPLE entries, all of them in a smaller window."""

import re
from datetime import UTC, datetime

import numpy as np

QUADRANTS = ("Q1", "Q2", "Q3", "Q4", "none")
SAMPLE = 100_000  # the newest entries of a window its risk quantiles and drift are computed on
SAMPLE_COLUMNS = ["ts", "risk", "calibration", "distance_ratio"]
_COUNTED = ("count", "flagged", "flagged_known", "inside", "inside_known", "latency_sum")
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


def _share(true: int | None, known: int) -> float | None:
    """Share of `true` among `known` (None when none is known)."""
    return (true or 0) / known if known else None


def _quantiles(values: list, qs=(0.5, 0.9, 0.99)) -> dict | None:
    if not values:
        return None
    return {f"p{round(q * 100)}": float(v) for q, v in zip(qs, np.quantile(values, qs))}


def _total(groups: list) -> dict:
    """The sums of `Store.bucket_counts` groups."""
    return {key: sum(g[key] or 0 for g in groups) for key in _COUNTED}


def _stats(groups: list, risks: list) -> dict:
    t = _total(groups)
    return {"count": t["count"], "flagged_share": _share(t["flagged"], t["flagged_known"]),
            "risk_quantiles": _quantiles(risks), "in_distribution_share": _share(t["inside"], t["inside_known"])}


def _mean_latency(groups: list) -> float | None:
    t = _total(groups)
    return t["latency_sum"] / t["count"] if t["count"] else None


def summarize(counts: list, sample: list, since: float, until: float, bucket_s: float,
              drift: dict | None = None) -> dict:
    """The summary of a window from its entries counted per bucket, quadrant and replica (`counts`:
    `Store.bucket_counts`) and, for the risk quantiles, its newest entries (`sample`: dicts with
    SAMPLE_COLUMNS, at most SAMPLE); `drift`: the sample's drift per calibration
    (app/monitor/drift.py `window_drift`), when there are calibrations to compare with."""
    n_buckets = max(1, int(np.ceil((until - since) / bucket_s)))
    per_bucket: list = [[] for _ in range(n_buckets)]
    for g in counts:
        per_bucket[min(g["bucket"], n_buckets - 1)].append(g)
    risks: list = [[] for _ in range(n_buckets)]
    for r in sample:
        if r["risk"] is not None:
            risks[min(int((r["ts"] - since) // bucket_s), n_buckets - 1)].append(r["risk"])
    replicas: dict = {}
    for g in counts:
        replicas[g["replica"]] = replicas.get(g["replica"], 0) + g["count"]
    return {
        "since": iso(since), "until": iso(until), "bucket_s": bucket_s,
        **_stats(counts, [v for b in risks for v in b]),
        "quadrants": {q: {"count": t["count"], "flagged_share": _share(t["flagged"], t["flagged_known"])}
                      for q in QUADRANTS
                      for t in [_total([g for g in counts if (g["quadrant"] or "none") == q])]},
        "replicas": replicas,
        "buckets": [{"start": iso(since + i * bucket_s), **_stats(b, r), "mean_latency_s": _mean_latency(b)}
                    for i, (b, r) in enumerate(zip(per_bucket, risks))],
        "quantile_entries": len(sample),
        "drift": drift,
    }
