"""Validation report: figures are written as PNG with no figure left open; Markdown content."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from app.calibration.report import markdown, trajectory_figure, write_figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMS = {"tau_hbar": 2.689, "tau_pri": 1.092,
          "joint_model_weights": {"w_hbar": 0.045, "w_pri": 2.097, "intercept": -2.74}}


def make_records(n: int = 40, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = i % 2
        steps = int(rng.integers(3, 21))
        pri_steps = rng.gamma(2.0, 0.5 + 0.3 * label, steps).tolist()
        hbar_steps = (2.7 - 0.2 * label + 0.3 * rng.standard_normal(steps)).tolist()
        records.append({
            "key": f"qa:{i // 2}:{label}", "task": "qa", "item": i // 2, "label": label,
            "hbar_s": float(np.mean(sorted(hbar_steps)[-5:])), "pri": float(np.mean(sorted(pri_steps)[-5:])),
            "steps": {"pri": pri_steps, "hbar_s": hbar_steps},
        })
    return records


def detector(auroc: float, lo: float, hi: float, threshold: float) -> dict:
    return {"auroc": auroc, "auroc_ci": [lo, hi], "pr_auc": 0.641, "precision_at_recall_0_9": 0.552,
            "at_calibrated_threshold": {"threshold": threshold, "precision": 0.575, "recall": 0.95,
                                        "confusion": {"tp": 19, "fp": 14, "tn": 6, "fn": 1}}}


METRICS = {
    "n": 40, "n_hallucinated": 20,
    "detectors": {"hbar": detector(0.5312, 0.401, 0.662, 2.689), "pri": detector(0.6034, 0.452, 0.741, 1.092),
                  "joint": detector(0.6187, 0.47, 0.77, 0.41)},
    "quadrants": {"Q1": {"count": 8, "share": 0.2, "hallucination_rate": 0.125},
                  "Q2": {"count": 24, "share": 0.6, "hallucination_rate": 0.625},
                  "Q3": {"count": 8, "share": 0.2, "hallucination_rate": 0.5},
                  "Q4": {"count": 0, "share": 0.0, "hallucination_rate": None}},
}


def test_write_figures_writes_three_pngs_and_closes_them(tmp_path):
    paths = write_figures(make_records(), PARAMS, METRICS, {}, tmp_path / "reports", "llama_qa_test")
    assert [p.name for p in paths] == ["llama_qa_test_roc.png", "llama_qa_test_pri_trajectories.png",
                                       "llama_qa_test_quadrants.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert plt.get_fignums() == []


def test_figure_is_closed_when_drawing_fails(tmp_path):
    records = make_records(4)
    del records[2]["steps"]
    with pytest.raises(KeyError):
        trajectory_figure(records, tmp_path / "t.png")
    assert plt.get_fignums() == []
    assert not (tmp_path / "t.png").exists()


def test_markdown_report_content():
    figures = ["llama_qa_test_roc.png", "llama_qa_test_pri_trajectories.png", "llama_qa_test_quadrants.png"]
    meta = {"model": "mlx-community/Llama-3.2-3B-Instruct-4bit", "task": "qa", "n": 40, "seed": 42}
    text = markdown(METRICS, PARAMS, meta, figures)
    assert text.startswith("# ")
    for expected in ("0.531 [0.401, 0.662]", "0.603 [0.452, 0.741]", "0.619 [0.470, 0.770]"):
        assert expected in text
    for name in figures:
        assert f"]({name})" in text
    assert "mlx-community/Llama-3.2-3B-Instruct-4bit" in text and "seed 42" in text and "n = 40" in text
    assert "τ_hbar = 2.689" in text and "τ_pri = 1.092" in text
    assert "| 19 (TP) | 1 (FN) |" in text and "| 14 (FP) | 6 (TN) |" in text
    assert "| Q2 |" in text and "| 60.0% | 62.5% |" in text
    assert "| 0 | 0.0% | n/a |" in text


def _selection_params_and_metrics(best_auroc: float):
    params = {**PARAMS, "risk": {"detector": "probe_prompt_end", "a": 1.0, "b": 0.0},
              "detectors": {"probe_prompt_end": {"direction": 1, "layer": 11, "layer_cv_auroc": [0.9] * 30},
                            "entropy_max": {"direction": -1}, "pri": {"direction": 1}}}
    entry = {"auroc_ci": [0.4, 0.6], "pr_auc": 0.5, "precision_at_recall_0_9": 0.5, "auroc_same_length": 0.55}
    metrics = {**METRICS, "all_detectors": {
        "probe_prompt_end": {**entry, "auroc": best_auroc, "cv_auroc": 0.98},
        "entropy_max": {**entry, "auroc": 0.61, "cv_auroc": 0.64},
        "pri": {**entry, "auroc": 0.41, "cv_auroc": 0.41, "auroc_same_length": None}},
        "risk": {"detector": "probe_prompt_end", "auroc": best_auroc, "brier": 0.05, "brier_base_rate": 0.25},
        "answer_length": {"direction": 1, "auroc": 0.97, "auroc_ci": [0.95, 0.99], "pr_auc": 0.96,
                          "precision_at_recall_0_9": 0.93, "same_length_pairs": 812, "all_pairs": 40000}}
    return params, metrics


def test_markdown_lists_every_detector_the_length_reference_and_the_goal():
    params, metrics = _selection_params_and_metrics(0.97)
    text = markdown(metrics, params, {"model": "m", "task": "qa", "n": 40}, [])
    assert "| **probe_prompt_end** | linear probe, prompt end, block 12 of 30 | 0.980 | 0.970 [0.400, 0.600] " \
           "| 0.550 |" in text
    assert "| entropy_max | max token entropy (lower flags) | 0.640 |" in text
    assert "| *answer length* | model-free reference: words in the judged answer (more flags) | " \
           "| 0.970 [0.950, 0.990] |" in text
    assert "(812 of 40000 pairs)" in text and "Brier score 0.0500 (constant base rate: 0.2500)" in text
    assert "0.970 vs PRI 0.410 (+0.560) — met" in text
    _, metrics = _selection_params_and_metrics(0.62)
    assert "0.620 vs PRI 0.410 (+0.210) — not met" in markdown(metrics, params, {}, [])
    transfer = markdown(metrics, params, {"task": "dialogue", "params_task": "qa"}, [])
    assert "calibrated on task qa (transfer)" in transfer and "Goal" not in transfer


def test_layer_figure_is_written(tmp_path):
    from app.calibration.report import layer_figure

    curves = {"prompt_end": {"layer": 3, "train_cv_auroc": [0.5, 0.7, 0.8, 0.9], "test_auroc": [0.5, 0.6, 0.8, 0.85]},
              "last_step": {"layer": 1, "train_cv_auroc": [0.6, 0.7, 0.6, 0.5], "test_auroc": None}}
    layer_figure(curves, tmp_path / "layers.png")
    assert (tmp_path / "layers.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plt.get_fignums() == []
