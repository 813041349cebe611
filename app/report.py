"""Validation report: ROC, PRI trajectory and quadrant figures (PNG) and a Markdown summary.

Inputs are the per-sample score records ({"key", "task", "item", "label", "hbar_s", "pri",
"steps": {"pri": [...], "hbar_s": [...]}}), the params dict and the metrics dict of a validation
run (SIGNALS.md, calibration step 7).
"""

from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from signals.calibration import joint_probability  # noqa: E402
from signals.quadrant import LABELS  # noqa: E402

DETECTORS = {"hbar": "ℏₛ (flag if ℏₛ ≤ τ)", "pri": "PRI (flag if PRI ≥ τ)", "joint": "joint (logistic)"}
# Heat-map cells: rows ℏₛ > τ / ℏₛ ≤ τ, columns PRI < τ / PRI ≥ τ.
QUADRANT_GRID = (("Q1", "Q3"), ("Q4", "Q2"))
GROUPS = ((1, "hallucinated", "tab:red"), (0, "correct", "tab:blue"))


@contextmanager
def _figure(path: Path, **subplots):
    """A new figure saved to ``path`` on success and closed in every case."""
    fig, ax = plt.subplots(**subplots)
    try:
        yield fig, ax
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def roc_figure(records: list[dict], params: dict, path: Path) -> None:
    """ROC curves of −ℏₛ, PRI and the joint probability on one plot, AUROC in the legend."""
    labels = np.array([r["label"] for r in records])
    hbar = np.array([r["hbar_s"] for r in records], float)
    pri = np.array([r["pri"] for r in records], float)
    scores = {
        "ℏₛ (inverted)": -hbar,
        "PRI": pri,
        "joint": joint_probability(hbar, pri, params["joint_model_weights"]),
    }
    with _figure(path, figsize=(5.5, 5)) as (fig, ax):
        for name, score in scores.items():
            fpr, tpr, _ = roc_curve(labels, score)
            ax.plot(fpr, tpr, lw=2, label=f"{name}: AUROC {auc(fpr, tpr):.3f}")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate (hallucinations found)",
               title=f"ROC, n = {len(records)}", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")


def _mean_per_step(trajectories: list[list[float]]) -> np.ndarray:
    """Mean at each step index over the trajectories long enough to have that step."""
    padded = np.full((len(trajectories), max(map(len, trajectories))), np.nan)
    for row, values in zip(padded, trajectories):
        row[: len(values)] = values
    return np.nanmean(padded, axis=0)


def trajectory_figure(records: list[dict], path: Path) -> None:
    """Per-step PRI of every sample (thin lines) and the mean per step of each group (thick)."""
    with _figure(path, figsize=(7, 4.5)) as (fig, ax):
        for label, name, colour in GROUPS:
            runs = [r["steps"]["pri"] for r in records if r["label"] == label and r["steps"]["pri"]]
            if not runs:
                continue
            for values in runs:
                ax.plot(values, color=colour, lw=0.6, alpha=0.2)
            ax.plot(_mean_per_step(runs), color=colour, lw=2.5, label=f"{name}: mean (n = {len(runs)})")
        ax.set(xlabel="step t", ylabel="PRI_t", title="Per-step PRI trajectories")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper right")


def _quadrant_text(name: str, q: dict) -> str:
    rate = "n/a" if q["hallucination_rate"] is None else f"{q['hallucination_rate']:.1%}"
    return f"{name}: {LABELS[name].split(':')[0]}\nn = {q['count']} ({q['share']:.1%})\nhallucination rate {rate}"


def quadrant_figure(metrics: dict, path: Path) -> None:
    """2×2 heat map of the quadrants coloured by hallucination rate, every cell annotated."""
    quadrants = metrics["quadrants"]
    rates = np.array([[np.nan if quadrants[q]["hallucination_rate"] is None else quadrants[q]["hallucination_rate"]
                       for q in row] for row in QUADRANT_GRID])
    with _figure(path, figsize=(6.5, 5)) as (fig, ax):
        image = ax.imshow(np.ma.masked_invalid(rates), cmap="Reds", vmin=0, vmax=1)
        ax.set_facecolor("lightgrey")
        for (i, j), name in np.ndenumerate(np.array(QUADRANT_GRID)):
            ax.text(j, i, _quadrant_text(name, quadrants[name]), ha="center", va="center", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
        ax.set_xticks([0, 1], ["PRI < τ_pri", "PRI ≥ τ_pri"])
        ax.set_yticks([0, 1], ["ℏₛ > τ_hbar", "ℏₛ ≤ τ_hbar"])
        ax.set_title("Quadrants (colour: hallucination rate; grey: no samples)")
        fig.colorbar(image, ax=ax, label="hallucination rate")


def write_figures(records: list[dict], params: dict, metrics: dict, out_dir: Path, stem: str) -> list[Path]:
    """Write ``{stem}_roc.png``, ``{stem}_pri_trajectories.png`` and ``{stem}_quadrants.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}_{name}.png" for name in ("roc", "pri_trajectories", "quadrants")]
    roc_figure(records, params, paths[0])
    trajectory_figure(records, paths[1])
    quadrant_figure(metrics, paths[2])
    return paths


def _num(x, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _detector_row(name: str, d: dict) -> str:
    at = d.get("at_calibrated_threshold") or {"threshold": None, "precision": None, "recall": None}
    lo, hi = d["auroc_ci"]
    return (f"| {DETECTORS.get(name, name)} | {_num(d['auroc'])} [{_num(lo)}, {_num(hi)}] | {_num(d['pr_auc'])} "
            f"| {_num(d['precision_at_recall_0_9'])} | {_num(at['threshold'], '.4g')} "
            f"| {_num(at['precision'])} | {_num(at['recall'])} |")


def _confusion(name: str, c: dict) -> list[str]:
    return [f"**{DETECTORS.get(name, name)}**", "",
            "| | flagged | not flagged |", "|---|---:|---:|",
            f"| hallucinated | {c['tp']} (TP) | {c['fn']} (FN) |",
            f"| correct | {c['fp']} (FP) | {c['tn']} (TN) |", ""]


def _quadrant_row(name: str, q: dict) -> str:
    return (f"| {name} | {LABELS[name]} | {q['count']} | {q['share']:.1%} "
            f"| {_num(q['hallucination_rate'], '.1%')} |")


def _baseline_lines(baselines: dict) -> list[str]:
    if not baselines:
        return []
    rows = [f"| {name} | {'higher' if b['direction'] > 0 else 'lower'} | {_num(b['auroc'])} "
            f"[{_num(b['auroc_ci'][0])}, {_num(b['auroc_ci'][1])}] | {_num(b['pr_auc'])} "
            f"| {_num(b['precision_at_recall_0_9'])} |" for name, b in baselines.items()]
    return ["## Single-pass baselines (same forward passes)", "",
            "Direction (which side flags a hallucination) chosen on the training split.", "",
            "| baseline | flags when | AUROC [95% CI] | PR-AUC | precision at recall ≥ 0.9 |",
            "|---|---|---|---:|---:|", *rows, ""]


def markdown(metrics: dict, params: dict, meta: dict, figures: list[str]) -> str:
    """The validation report as Markdown: setup, detector table, confusion matrices, quadrants, figures."""
    w = params["joint_model_weights"]
    detectors = metrics["detectors"]
    lines = [
        "# halluwatch validation report", "",
        f"- model: `{meta.get('model', 'n/a')}`",
        f"- task: {meta.get('task', 'n/a')}, n = {meta.get('n', metrics['n'])} "
        f"({metrics['n_hallucinated']} hallucinated), seed {meta.get('seed', 'n/a')}",
        f"- thresholds: τ_hbar = {params['tau_hbar']:.4g} (flag if ℏₛ ≤ τ), "
        f"τ_pri = {params['tau_pri']:.4g} (flag if PRI ≥ τ)",
        f"- joint model: w_hbar = {w['w_hbar']:.4g}, w_pri = {w['w_pri']:.4g}, intercept = {w['intercept']:.4g}",
        "", "## Detectors", "",
        "| detector | AUROC [95% CI] | PR-AUC | precision at recall ≥ 0.9 | calibrated threshold "
        "| precision | recall |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(_detector_row(name, d) for name, d in detectors.items()),
        "", "## Confusion matrices at the calibrated thresholds", "",
        *(line for name, d in detectors.items() if "at_calibrated_threshold" in d
          for line in _confusion(name, d["at_calibrated_threshold"]["confusion"])),
        *_baseline_lines(metrics.get("baselines") or {}),
        "## Quadrants", "",
        "| quadrant | meaning | count | share | hallucination rate |", "|---|---|---:|---:|---:|",
        *(_quadrant_row(name, q) for name, q in sorted(metrics["quadrants"].items())),
        "", "## Figures", "",
        *(f"![{Path(f).stem}]({f})\n" for f in figures),
    ]
    return "\n".join(lines)
