"""bench/labelfree.py: its test sets, and an arm whose training samples calibrate refuses (a
consistency target of one class) reported with its reason and scoring time instead of a crash."""

from pathlib import Path

import pytest

from app.calibration.halueval import DatasetError
from support import load_bench

bench = load_bench("labelfree")


def test_test_sets_parse_sources_and_size():
    assert bench.test_sets(None, "nq_open,halueval_open:90") == [(("nq_open", "halueval_open"), 90)]
    assert bench.test_sets(["a.jsonl:150", "x,y:20"], "unused:1") == [(("a.jsonl",), 150), (("x", "y"), 20)]
    with pytest.raises(SystemExit, match="SOURCES:N"):
        bench.test_sets(["nq_open"], "unused:1")


def test_a_refused_arm_keeps_its_reason_and_scoring_time(monkeypatch):
    def refuses(engine, spec, out, reports, progress):
        progress(0, 16)
        progress(16, 16)
        raise DatasetError("1 of the 16 training samples are labelled consistent: too few", "n")

    monkeypatch.setattr(bench, "calibrate", refuses)
    run = bench.timed_calibrate(None, None, Path("out"), Path("reports"))
    assert run["params"] is None and "labelled consistent" in run["refused"]
    assert run["scored"] == 16 and run["seconds"] >= 0


def test_a_refused_arm_is_skipped_in_the_comparison():
    args = type("Args", (), {"n_boot": 10, "seed": 0})()
    out = bench.compare({"label_free": None, "labelled": None}, [{"label": 0}, {"label": 1}], None, args)
    assert out["arms"]["label_free"] == {"skipped": "no params"}
    assert "label_free: no params" in out["difference"]["labelled"]["skipped"]
