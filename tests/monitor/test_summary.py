"""The monitor summary of hand-made entries: counts, shares, quantiles, buckets."""

import pytest

from app.monitor.summary import parse_duration, summarize


def entry(ts, quadrant, flagged, risk, inside, latency, replica="a"):
    return {"ts": ts, "quadrant": quadrant, "flagged": flagged, "risk": risk, "in_distribution": inside,
            "latency_s": latency, "replica": replica}


def test_summary_of_a_window():
    rows = [entry(0, "Q1", False, 0.1, True, 1.0), entry(10, "Q2", True, 0.9, False, 3.0, "b"),
            entry(70, "Q2", False, 0.3, True, 2.0), entry(130, None, None, None, None, 4.0)]
    s = summarize(rows, since=0, until=180, bucket_s=60)
    assert s["count"] == 4 and s["flagged_share"] == pytest.approx(1 / 3)
    assert s["quadrants"]["Q2"] == {"count": 2, "flagged_share": 0.5}
    assert s["quadrants"]["none"] == {"count": 1, "flagged_share": None} and s["quadrants"]["Q3"]["count"] == 0
    assert s["risk_quantiles"]["p50"] == pytest.approx(0.3) and s["in_distribution_share"] == pytest.approx(2 / 3)
    assert s["replicas"] == {"a": 3, "b": 1} and s["drift"] is None
    assert [b["count"] for b in s["buckets"]] == [2, 1, 1]
    assert [b["mean_latency_s"] for b in s["buckets"]] == [2.0, 2.0, 4.0]
    assert s["buckets"][0]["flagged_share"] == 0.5 and s["buckets"][2]["risk_quantiles"] is None
    assert s["buckets"][1]["start"] == "1970-01-01T00:01:00Z"


def test_empty_window_and_durations():
    s = summarize([], since=0, until=3600, bucket_s=900)
    assert s["count"] == 0 and s["flagged_share"] is None and len(s["buckets"]) == 4
    assert [parse_duration(t) for t in ("90s", "15m", "24h", "7d")] == [90, 900, 86400, 604800]
