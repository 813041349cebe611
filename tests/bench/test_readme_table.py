"""The quality table of docs/results.md is generated from the committed params and reports, and is current."""

import json

from support import REPO_ROOT, load_bench

readme_table = load_bench("readme_table")


def _detector(auroc):
    return {"auroc": auroc, "auroc_ci": [auroc - 0.05, auroc + 0.05], "cv_auroc": auroc + 0.01,
            "auroc_same_length": auroc - 0.2}


def _report(task, n, probe_auroc):
    return {"task": task, "n": n, "metrics": {
        "all_detectors": {"probe_prompt_end": _detector(probe_auroc), "pri": _detector(0.41)},
        "answer_length": {"auroc": 0.9, "auroc_ci": [0.85, 0.95]}}}


def test_table_lists_every_detector_on_every_task(tmp_path):
    params = {"task": "qa", "ranking": ["probe_prompt_end", "pri"], "risk": {"detector": "probe_prompt_end"},
              "detectors": {"probe_prompt_end": {"layer": 11, "layer_cv_auroc": [0.9] * 30}, "pri": {"direction": 1}}}
    (tmp_path / "p.json").write_text(json.dumps(params))
    for task, n, auroc in (("qa", 200, 0.7), ("qa", 400, 0.97), ("dialogue", 200, 0.55)):
        (tmp_path / f"p_eval_{task}_n{n}.json").write_text(json.dumps(_report(task, n, auroc)))
    reports = readme_table.reports_for(tmp_path / "p.json", tmp_path)
    assert reports["qa"]["n"] == 400 and "summarization" not in reports  # the largest n wins
    text = readme_table.table(params, reports)
    lines = text.splitlines()
    assert lines[0].startswith("| detector | what it reads | train CV AUROC (qa) | qa test AUROC [95% CI], n = 400")
    assert lines[0].endswith("| dialogue (transfer), n = 200 |")
    assert lines[2] == ("| **probe_prompt_end** (`risk`) | linear probe, prompt end, block 12 of 30 | 0.980 "
                        "| 0.970 [0.920, 1.020] | 0.770 | 0.550 [0.500, 0.600] |")
    assert lines[3].startswith("| pri | seed: PRI, top-5 mean | 0.420 | 0.410 [0.360, 0.460] | 0.210 |")
    assert lines[4] == ("| *answer length* | model-free reference: words in the judged answer | | 0.900 [0.850, 0.950] "
                        "| | 0.900 [0.850, 0.950] |")


def test_readme_table_matches_the_committed_reports():
    assert readme_table.DOC == REPO_ROOT / "docs" / "results.md"
    doc = readme_table.DOC.read_text()
    assert readme_table.BLOCK.search(doc), "docs/results.md lost its quality-table block"
    assert readme_table.render(doc) == doc, "run python bench/readme_table.py"
    # the table lives in one place only: no stale copy left behind in the README
    assert not readme_table.BLOCK.search((REPO_ROOT / "README.md").read_text()), \
        "README.md has a quality table; it belongs in docs/results.md"
