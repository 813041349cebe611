"""The log store on SQLite and PostgreSQL: migrations, insert, label, filtered cursor pages, retention."""

import time
from pathlib import Path

import pytest

from app.monitor.entry import Context, Exchange
from app.monitor.store import SIZE_HEADROOM, BadCursor, Filters, Store

CONTEXT = Context(replica="r1", model="m", model_fingerprint="f" * 16, flag_risk=0.5, keep_text=False, salt=b"s" * 32)


def body(risk: float | None, quadrant: str | None = "Q1") -> dict:
    return {"text": "answer", "finish_reason": "eos", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            "scores": {"hbar_s": 1.0, "pri": 2.0, "probe_distance_ratio": 0.5},
            "quadrant": {"name": quadrant, "params": "p.json"} if quadrant else None,
            "risk": None if risk is None else {"probability": risk, "detector": "d", "in_distribution": True,
                                               "calibration": "p.json"}}


def rows(n: int, start: float, step: float = 1.0, prefix: str = "id", **kw) -> list:
    return [CONTEXT.row(Exchange("/generate", f"prompt {i}", "raw", response_id=f"{prefix}-{i:04d}"),
                        body(**kw) if kw else body(i / n), now=start + i * step) for i in range(n)]


def test_migrations_are_idempotent_and_rows_round_trip(store):
    again = Store(store.url)  # a second replica (or a restart) opens the migrated schema
    again.close()
    store.insert(rows(3, 1000.0))
    got = store.get("id-0001")
    assert got["scores"] == {"hbar_s": 1.0, "pri": 2.0, "probe_distance_ratio": 0.5}
    assert got["quadrant"] == "Q1" and got["flagged"] is False
    assert got["risk"] == pytest.approx(1 / 3) and got["distance_ratio"] == 0.5 and got["calibration"] == "p.json"
    assert got["prompt"] is None and len(got["prompt_hash"]) == 64 and got["response_tokens"] == 2
    assert store.get("no-such-id") is None and store.count() == 3


def test_label_overwrites_and_reports_the_previous_label(store):
    store.insert(rows(1, 1000.0))
    assert store.label("id-0000", "correct", None, 1.0) == {"label": None, "note": None}
    assert store.label("id-0000", "hallucinated", "wrong year", 2.0) == {"label": "correct", "note": None}
    got = store.get("id-0000")
    assert (got["label"], got["note"], got["labelled_ts"]) == ("hallucinated", "wrong year", 2.0)
    assert store.label("missing", "correct", None, 3.0) is None


def test_pages_follow_the_cursor_newest_first_under_filters(store):
    store.insert(rows(25, 1000.0) + rows(5, 1000.0, step=0.0, prefix="eq", risk=None, quadrant=None))  # equal times too
    seen, cursor = [], None
    while True:
        page, cursor = store.page(Filters(), 7, cursor)
        seen += page
        if cursor is None:
            break
    assert len(seen) == 30 == len({r["id"] for r in seen})
    assert [r["ts"] for r in seen] == sorted((r["ts"] for r in seen), reverse=True)
    flagged, _ = store.page(Filters(flagged=True), 100)
    assert {r["id"] for r in flagged} == {f"id-{i:04d}" for i in range(25) if i / 25 >= 0.5}
    risky, _ = store.page(Filters(risk_above=0.9), 100)
    assert all(r["risk"] > 0.9 for r in risky) and len(risky) == 2
    unassessed, _ = store.page(Filters(quadrant="none"), 100)
    assert len(unassessed) == 5 and all(r["flagged"] is None for r in unassessed)
    window, _ = store.page(Filters(since=1005.0, until=1010.0), 100)
    assert sorted(r["ts"] for r in window) == [1005.0, 1006.0, 1007.0, 1008.0, 1009.0]
    store.label("id-0003", "correct", None, 1.0)
    assert [r["id"] for r in store.page(Filters(labelled=True), 100)[0]] == ["id-0003"]
    assert len(store.page(Filters(labelled=False), 100)[0]) == 29
    assert store.page(Filters(route="/score"), 100)[0] == []
    with pytest.raises(BadCursor):
        store.page(Filters(), 5, "bm90IGEgY3Vyc29y")


def test_prune_by_age_then_by_row_count(store):
    now = time.time()
    store.insert(rows(10, now - 100 * 86400, prefix="old") + rows(10, now - 10, prefix="new"))
    assert store.prune(now - 30 * 86400, 1000) == 10 and store.count() == 10
    assert store.prune(now - 30 * 86400, 4) == 6
    assert sorted(r["id"] for r in store.rows(Filters())) == ["new-0006", "new-0007", "new-0008", "new-0009"]


def test_prune_to_size_deletes_the_oldest_until_the_store_is_under_the_limit(store):
    store.insert(rows(3000, 1000.0))
    full = store.size()
    assert store.prune_to_size(full) == 0 and store.count() == 3000  # at the limit: nothing goes
    limit = full // 3
    deleted = store.prune_to_size(limit)
    kept = sorted(r["id"] for r in store.rows(Filters(), ["id"]))
    assert store.size() <= limit and deleted == 3000 - len(kept)
    assert kept == [f"id-{i:04d}" for i in range(3000 - len(kept), 3000)]  # the newest stay
    assert len(kept) >= 3000 * SIZE_HEADROOM / 3 * 0.5  # not far more than needed goes
    if store.url.startswith("sqlite:"):  # the file itself shrank: free pages went back, the WAL was emptied
        path = Path(store.url.split("///", 1)[1])
        assert path.stat().st_size <= limit and Path(f"{path}-wal").stat().st_size == 0


def test_postgresql_tests_fail_in_ci_without_a_server(monkeypatch):
    from support import postgres

    monkeypatch.delenv(postgres.URL_VARIABLE, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=postgres.URL_VARIABLE):
        postgres.server_url()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        postgres.server_url()
