"""The performance and robustness tables of docs/results.md are generated from the committed bench
results (bench/results/*.json) and are current; the benches' statistics and results feed them."""

import argparse
import json

import pytest

from support import REPO_ROOT, load_bench


tables = load_bench("tables")
benchlib = load_bench("benchlib")
RESULTS = REPO_ROOT / "bench" / "results"


def test_docs_tables_match_the_committed_results():
    doc = tables.DOC.read_text()
    kinds = sorted({m["kind"] for m in tables.BLOCK.finditer(doc)})  # a kind may have several tables
    assert kinds == ["calibration-speed", "concurrency", "idle-memory", "label-free", "overhead", "response-log",
                     "robustness"]
    assert tables.render(doc) == doc, "run python bench/tables.py"


def test_every_committed_result_is_shown_and_says_where_it_comes_from():
    shown = {f for m in tables.BLOCK.finditer(tables.DOC.read_text()) for f in m["files"].split()}
    committed = {p.relative_to(REPO_ROOT).as_posix() for p in RESULTS.glob("*.json")}
    assert shown == committed
    for path in committed:
        r = json.loads((REPO_ROOT / path).read_text())
        assert r["command"].startswith(f"python bench/{r['bench']}.py"), path
        assert r["date"][:4].isdigit() and r["machine"], path
        if r.get("reconstructed_from"):  # copied from an older table: it must say what it lacks
            assert r["note"] and r["commit"] is None, path
        else:  # written by a run from a committed tree
            assert r["commit"] and not r["commit"].endswith("+dirty"), path


def test_ratio_spread_and_goal():
    s = benchlib.spread([1.0, 0.9, 1.2, 0.96], "median of per-pair ratios")
    assert (s["value"], s["min"], s["max"], s["n"]) == (pytest.approx(0.98), 0.9, 1.2, 4)
    assert (s["q1"], s["q3"]) == (pytest.approx(0.945), pytest.approx(1.05))
    ok, low = benchlib.judge(s, "r", ("≥", 0.97)), benchlib.judge(s, "r", ("≥", 0.99))
    assert ok["pass"] and not low["pass"] and ok["goal"] == "≥ 0.97"
    assert benchlib.describe(low) == ("r = 0.98 (median of per-pair ratios; range 0.9–1.2; IQR 0.945–1.05; n = 4); "
                                      "goal ≥ 0.99: FAIL")
    assert benchlib.judge(s, "r", ("≤", 1.0))["pass"]


def test_calibration_speed_pairs_samples_and_keeps_batches_whole():
    speed = load_bench("calibration_speed")
    rows = [{"group": 1, "b": 1.0, "c": 2.0, "a": 20.0}, {"group": 1, "b": 2.0, "c": 2.0},
            {"group": 2, "b": 1.0, "c": 1.0, "a": 5.0}, {"group": 2, "b": 1.0, "c": 3.0}]
    batches = [{"group": 1, "size": 2, "seconds": 1.0}, {"group": 2, "size": 2, "seconds": 4.0}]
    result = speed.summary(rows, batches, 2)
    d = result["methods"]["d"]
    assert (d["n"], d["batches"], d["s_per_batch"], d["s_per_sample"]) == (4, 2, 2.5, 1.25)
    assert result["methods"]["a"]["n"] == 2
    c_over_b, d_over_c, a_over_c = result["ratios"]
    assert c_over_b["value"] == pytest.approx(1.5)  # median of 2, 1, 1, 3
    # per group: the group's one-at-a-time seconds ÷ its batch's seconds
    assert d_over_c["value"] == pytest.approx((4 / 1 + 4 / 4) / 2) and d_over_c["pass"]
    assert a_over_c["value"] == pytest.approx((10 + 5) / 2)  # (a) only against (c) of the same samples
    without_a = speed.summary([{k: v for k, v in r.items() if k != "a"} for r in rows], batches, 2)  # --proto 0
    assert "a" not in without_a["methods"] and len(without_a["ratios"]) == 2
    assert "| (d) halluwatch, batches of 2 | 1.25 | 0.8 | 4 samples in 2 batches, 2.5 s/batch |" in \
        tables.calibration_speed([{**result, "command": "python bench/calibration_speed.py", "date": "2026-01-01",
                                   "machine": "m", "dtype": "float32", "blas": "openblas", "model": "x",
                                   "max_tokens": 20}])


def test_a_short_soak_fills_its_table_row(tiny_model_path, tmp_path):
    fuzz, soak = load_bench("fuzz"), load_bench("soak")
    with fuzz.serve(tiny_model_path("llama"), tmp_path, max_tokens_limit=4) as (url, _app, engine):
        result = soak.soak(url, engine.lm.config, engine.lm.dtype, n=6, every=2, max_tokens=4, warmup=2,
                           max_slope=1e9, out=lambda *_: None)
    assert result["requests"] == 6 and not result["failures"] and result["samples_fitted"] == 3
    assert result["slope_pass"] and result["slope_kib_per_request"] is not None
    bench, text = tables.soak_row({"model": "tiny", **result, "ok": True})
    assert bench.startswith("soak (6 sequential requests") and "**RSS slope " in text


def test_concurrency_judges_a_count_by_the_median_of_its_rounds():
    conc = load_bench("concurrency")

    def answer(tok_s, p95):
        return {"tok_s": tok_s, "p95_s": p95, "by_status": {"200": 4}, "equal_to_sequential": 4, "ok_answers": 4}

    rounds = [{"halluwatch": answer(hw, p), "mlx_lm.server": answer(10.0, 2.0)}
              for hw, p in ((9.0, 2.4), (11.0, 1.8), (12.0, 1.9))]
    args = argparse.Namespace(goal=1.0)
    row = conc.judge_level({"clients": 8, "rounds": rounds, "halluwatch": answer(10.7, 2.0)}, args)
    assert [r["tok_s_ratio"] for r in row["rounds"]] == pytest.approx([0.9, 1.1, 1.2])
    assert row["tok_s_ratio"] == pytest.approx(1.1) and row["p95_ratio"] == pytest.approx(0.95)
    assert all(row["goals"].values())  # one round below 1.0 does not decide the count
    rounds[1]["halluwatch"]["tok_s"] = 9.5
    assert not conc.judge_level({"clients": 8, "rounds": rounds, "halluwatch": answer(10.0, 2.0)}, args)["goals"][
        "median tok/s ratio ≥ 1.0"]
