"""The monitor summary of hand-made entries, counted in SQL on SQLite and PostgreSQL: counts, shares,
quantiles, buckets."""

import pytest
from test_store import CONTEXT, body

from app.monitor.entry import Exchange
from app.monitor.store import Filters
from app.monitor.summary import SAMPLE_COLUMNS, parse_duration, summarize


def entry(ts, quadrant, flagged, risk, inside, latency, replica="a"):
    row = CONTEXT.row(Exchange("/generate", "p", "raw", response_id=f"e{ts}"), body(0.5), now=ts)
    return {**row, "quadrant": quadrant, "flagged": flagged, "risk": risk, "in_distribution": inside,
            "latency_s": latency, "replica": replica}


def summary(store, since, until, bucket_s, sample=100):
    sample = store.newest(Filters(since=since, until=until), SAMPLE_COLUMNS, sample)
    return summarize(store.bucket_counts(since, until, bucket_s), sample, since, until, bucket_s)


def test_summary_of_a_window(store):
    store.insert([entry(0, "Q1", False, 0.1, True, 1.0), entry(50, "Q2", True, 0.9, False, 3.0, "b"),
                  entry(70, "Q2", False, 0.3, True, 2.0), entry(130, None, None, None, None, 4.0),
                  entry(180, "Q1", True, 0.2, True, 1.0)])  # at `until`: outside
    s = summary(store, since=0, until=180, bucket_s=60)
    assert s["count"] == 4 and s["flagged_share"] == pytest.approx(1 / 3)
    assert s["quadrants"]["Q2"] == {"count": 2, "flagged_share": 0.5}
    assert s["quadrants"]["none"] == {"count": 1, "flagged_share": None} and s["quadrants"]["Q3"]["count"] == 0
    assert s["risk_quantiles"]["p50"] == pytest.approx(0.3) and s["in_distribution_share"] == pytest.approx(2 / 3)
    assert s["replicas"] == {"a": 3, "b": 1} and s["drift"] is None and s["quantile_entries"] == 4
    assert [b["count"] for b in s["buckets"]] == [2, 1, 1]
    assert [b["mean_latency_s"] for b in s["buckets"]] == [2.0, 2.0, 4.0]
    assert s["buckets"][0]["flagged_share"] == 0.5 and s["buckets"][2]["risk_quantiles"] is None
    assert s["buckets"][1]["start"] == "1970-01-01T00:01:00Z"
    late = summary(store, since=0, until=180, bucket_s=60, sample=2)  # quantiles from the newest two
    assert late["count"] == 4 and late["quantile_entries"] == 2 and late["buckets"][0]["risk_quantiles"] is None
    assert late["buckets"][1]["risk_quantiles"]["p50"] == pytest.approx(0.3)


def test_empty_window_and_durations(store):
    s = summary(store, since=0, until=3600, bucket_s=900)
    assert s["count"] == 0 and s["flagged_share"] is None and len(s["buckets"]) == 4
    assert [parse_duration(t) for t in ("90s", "15m", "24h", "7d")] == [90, 900, 86400, 604800]
