"""Validation report: ROC, PRI trajectory and quadrant figures (PNG) and a Markdown summary.

Inputs are the per-sample score records ({"key", "task", "item", "label", "hbar_s", "pri",
"steps": {"pri": [...], "hbar_s": [...]}}), the params dict and the metrics dict of a validation
run (docs/signals.md, reference calibration protocol), and each detector's scores on the same samples.
"""

from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from signals.statistics import joint_probability  # noqa: E402
from signals import detectors, lazy  # noqa: E402
from signals.quadrant import LABELS  # noqa: E402

# The seed detectors' threshold rules, as the seed-signal tables name them.
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


def roc_figure(records: list[dict], params: dict, path: Path, scores: dict | None = None) -> None:
    """ROC curves of every detector in `scores` (name → score, higher = hallucinated) on one plot,
    AUROC in the legend; without `scores`, of −ℏₛ, PRI and the joint probability."""
    labels = np.array([r["label"] for r in records])
    if not scores:
        hbar = np.array([r["hbar_s"] for r in records], float)
        pri = np.array([r["pri"] for r in records], float)
        scores = {"hbar": -hbar, "pri": pri, "joint": joint_probability(hbar, pri, params["joint_model_weights"])}
    with _figure(path, figsize=(7, 6)) as (fig, ax):
        for name, score in scores.items():
            fpr, tpr, _ = lazy.roc_curve(labels, score)
            seed = detectors.get(name).seed
            ax.plot(fpr, tpr, lw=2.2 if seed else 1.4, ls="-" if seed or detectors.is_probe(name) else "--",
                    label=f"{name}: AUROC {lazy.auc(fpr, tpr):.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=1, label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate (hallucinations found)",
               title=f"ROC, n = {len(records)}", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)


def layer_figure(curves: dict, path: Path) -> None:
    """Per-layer probe AUROC: training CV (solid, what chose the layer) and test (dashed, diagnostic)."""
    with _figure(path, figsize=(7, 4.5)) as (fig, ax):
        for (position, c), colour in zip(curves.items(), ("tab:purple", "tab:green", "tab:orange")):
            layers = np.arange(1, len(c["train_cv_auroc"]) + 1)
            ax.plot(layers, c["train_cv_auroc"], color=colour, lw=2, marker="o", ms=3,
                    label=f"{position}: train CV")
            if c.get("test_auroc"):
                ax.plot(layers, c["test_auroc"], color=colour, lw=1.5, ls="--", label=f"{position}: test")
            ax.axvline(c["layer"] + 1, color=colour, lw=0.8, ls=":")
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set(xlabel="block (1 = first)", ylabel="AUROC", title="Linear probe AUROC per block")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="best", fontsize=8)


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


def write_figures(records: list[dict], params: dict, metrics: dict, scores: dict, out_dir: Path,
                  stem: str) -> list[Path]:
    """Write ``{stem}_roc.png`` (every detector in `scores`), ``{stem}_pri_trajectories.png``,
    ``{stem}_quadrants.png`` and, with probes, ``{stem}_probe_layers.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}_{name}.png" for name in ("roc", "pri_trajectories", "quadrants")]
    roc_figure(records, params, paths[0], scores)
    trajectory_figure(records, paths[1])
    quadrant_figure(metrics, paths[2])
    if metrics.get("probe_layers"):
        paths.append(out_dir / f"{stem}_probe_layers.png")
        layer_figure(metrics["probe_layers"], paths[-1])
    return paths


def num(x, spec: str = ".3f") -> str:
    """`x` formatted, or "n/a" for None."""
    return "n/a" if x is None else format(x, spec)


def _detector_row(name: str, d: dict) -> str:
    at = d.get("at_calibrated_threshold") or {"threshold": None, "precision": None, "recall": None}
    return (f"| {DETECTORS.get(name, name)} | {auroc_with_ci(d)} | {num(d['pr_auc'])} "
            f"| {num(d['precision_at_recall_0_9'])} | {num(at['threshold'], '.4g')} "
            f"| {num(at['precision'])} | {num(at['recall'])} |")


def _confusion(name: str, c: dict) -> list[str]:
    return [f"**{DETECTORS.get(name, name)}**", "",
            "| | flagged | not flagged |", "|---|---:|---:|",
            f"| hallucinated | {c['tp']} (TP) | {c['fn']} (FN) |",
            f"| correct | {c['fp']} (FP) | {c['tn']} (TN) |", ""]


def _quadrant_row(name: str, q: dict) -> str:
    return (f"| {name} | {LABELS[name]} | {q['count']} | {q['share']:.1%} "
            f"| {num(q['hallucination_rate'], '.1%')} |")


def auroc_with_ci(d: dict) -> str:
    """ "0.989 [0.980, 0.996]": a metrics entry's AUROC and its 95% CI."""
    return f"{num(d['auroc'])} [{num(d['auroc_ci'][0])}, {num(d['auroc_ci'][1])}]"


def describe(name: str, params: dict) -> str:
    """What a detector of the params reads, and which side flags (or its block, for a probe)."""
    return detectors.get(name).describe(params["detectors"][name])


def selection_lines(metrics: dict, params: dict, transfer: bool = False) -> list[str]:
    """The all-detector table (ranked on the training split), the `risk` line and, on the task the
    params were calibrated on, the goal check."""
    found = metrics.get("all_detectors")
    if not found:
        return []
    risk = metrics.get("risk") or {}
    chosen = params["risk"]["detector"]
    rows = [f"| {'**' + name + '**' if name == chosen else name} | {describe(name, params)} "
            f"| {num(d['cv_auroc'])} | {auroc_with_ci(d)} | {num(d.get('auroc_same_length'))} | {num(d['pr_auc'])} "
            f"| {num(d['precision_at_recall_0_9'])} |" for name, d in found.items()]
    length = metrics.get("answer_length")
    if length:
        rows.append(f"| *answer length* | model-free reference: words in the judged answer "
                    f"({'more' if length['direction'] > 0 else 'fewer'} flags) | | {auroc_with_ci(length)} | | "
                    f"{num(length['pr_auc'])} | {num(length['precision_at_recall_0_9'])} |")
    lines = ["## Every detector (ranked by cross-validated AUROC on the training split)", "",
             f"Selected on the training split (`risk`): **{chosen}**. Test AUROC with bootstrap 95% CI; "
             "directions, probes and the selection come from the training split only. "
             "\"Same length\" counts only (hallucinated, correct) pairs whose answers have the same number "
             f"of words ({length['same_length_pairs'] if length else 'n/a'} of "
             f"{length['all_pairs'] if length else 'n/a'} pairs): what a detector finds beyond answer length.", "",
             "| detector | what it reads | train CV AUROC | test AUROC [95% CI] | test AUROC, same length "
             "| PR-AUC | precision at recall ≥ 0.9 |",
             "|---|---|---:|---|---:|---:|---:|", *rows, ""]
    if risk:
        lines += [f"`risk` (Platt-scaled {chosen}): Brier score {risk['brier']:.4f} "
                  f"(constant base rate: {risk['brier_base_rate']:.4f}).", ""]
    if vs := risk.get("vs_best_single"):
        lo, hi = vs["ci"]
        lines += [f"`risk` against the best single raw score on this test set ({vs['detector']}, "
                  f"{vs['auroc']:.3f}): {vs['difference']:+.3f}, paired bootstrap 95% CI [{lo:+.3f}, {hi:+.3f}].", ""]
    if chosen in found and "pri" in found and not transfer:
        best, pri = found[chosen]["auroc"], found["pri"]["auroc"]
        met = best >= pri + 0.20 and best >= 0.85
        lines += [f"Goal (selected detector ≥ seed PRI + 0.20 and ≥ 0.85): {best:.3f} vs PRI {pri:.3f} "
                  f"(+{best - pri:.3f}) — {'met' if met else 'not met'}.", ""]
    return lines


def _layer_lines(curves: dict) -> list[str]:
    if not curves:
        return []
    lines = ["## Probe AUROC per block", "",
             "Training CV AUROC chose the block; the test column is a diagnostic only.", "",
             "| position | chosen block | best train CV (block) | best test (block) "
             "| test states within the training range |", "|---|---:|---|---|---:|"]
    for position, c in curves.items():
        cv = np.asarray(c["train_cv_auroc"])
        test = f"{max(c['test_auroc']):.3f} ({int(np.argmax(c['test_auroc'])) + 1})" if c.get("test_auroc") else "n/a"
        lines.append(f"| {position} | {c['layer'] + 1} | {cv.max():.3f} ({int(cv.argmax()) + 1}) | {test} "
                     f"| {num(c.get('in_distribution'), '.1%')} |")
    return lines + [""]


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
        *([f"- params calibrated on task {meta['params_task']} (transfer)"]
          if meta.get("params_task") not in (None, meta.get("task")) else []),
        "", "## Seed detectors at the calibrated thresholds", "",
        "| detector | AUROC [95% CI] | PR-AUC | precision at recall ≥ 0.9 | calibrated threshold "
        "| precision | recall |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(_detector_row(name, d) for name, d in detectors.items()),
        "", "## Confusion matrices at the calibrated thresholds", "",
        *(line for name, d in detectors.items() if "at_calibrated_threshold" in d
          for line in _confusion(name, d["at_calibrated_threshold"]["confusion"])),
        *selection_lines(metrics, params, meta.get("params_task") not in (None, meta.get("task"))),
        *_layer_lines(metrics.get("probe_layers") or {}),
        "## Quadrants", "",
        "| quadrant | meaning | count | share | hallucination rate |", "|---|---|---:|---:|---:|",
        *(_quadrant_row(name, q) for name, q in sorted(metrics["quadrants"].items())),
        "", "## Figures", "",
        *(f"![{Path(f).stem}]({f})\n" for f in figures),
    ]
    return "\n".join(lines)
