"""Label-free against labelled own-answer calibration: trained on the same questions, both tested
with gold labels on the same held-out split; and what each costs.

The labelled arm (`--task answers`) fits on the gold labels of the training questions; the
label-free arm (`--task consistency`) on whether K sampled answers agree with the greedy one,
gold labels unused. Both params are then scored on the test split's gold labels: the selected
detector's AUROC with its bootstrap 95% CI, Brier score and in-range share (as in the transfer
matrix), and the paired bootstrap CI of the AUROC difference. Cost: the scoring seconds of each
run (measured one after the other in this process, batched): seconds per labelled sample, per
label-free prompt and per answer generated (greedy or sampled); goal: a label-free prompt costs <= (K + 1) labelled
samples. Runs resume from the checkpoints in `--reports`; only what this run scored is timed.

    python bench/labelfree.py --n 150 --samples 5 --temperature 0.5 --json bench/results/labelfree.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "bench", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (OpenBLAS before mlx)
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from app.calibration.questions import SOURCES  # noqa: E402
from app.calibration.runs import calibrate, saved_detector_scores, states_by_position  # noqa: E402
from app.calibration.scoring import ANSWERS, CONSISTENCY, RunSpec, checkpoint_path, load_states, score_all  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.settings import Settings  # noqa: E402
from benchlib import add_json_option, exit_now, machine, write_json  # noqa: E402
from transfer_matrix import cell  # noqa: E402


def timed_calibrate(engine, spec: RunSpec, out: Path, reports: Path) -> tuple:
    """(params path, scoring seconds, samples scored by this run): the seconds between the first
    progress report (checkpoint read) and the last (last batch written)."""
    marks = []
    path = calibrate(engine, spec, out, reports, progress=lambda done, total: marks.append((time.perf_counter(), done)))
    return path, marks[-1][0] - marks[0][0], marks[-1][1] - marks[0][1]


def paired_difference(a, b, labels, n_boot: int, seed: int) -> dict:
    """AUROC(a) − AUROC(b) on the same samples, with its paired percentile bootstrap 95% CI."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() != labels[idx].max():
            diffs.append(roc_auc_score(labels[idx], a[idx]) - roc_auc_score(labels[idx], b[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"value": float(roc_auc_score(labels, a) - roc_auc_score(labels, b)), "ci": [float(lo), float(hi)]}


def risk_scores(path: Path, records: list, states: dict) -> np.ndarray:
    params = json.loads(Path(path).read_text())
    return np.asarray(saved_detector_scores(params, path.parent, records, states)[0][params["risk"]["detector"]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--n", type=int, default=150, help="training questions, and as many test questions")
    ap.add_argument("--samples", type=int, default=5, help="K: sampled answers per prompt (label-free)")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=8, help="questions (labelled) or prompts (label-free) a batch")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--reports", type=Path, help="checkpoints and params (default: $HALLUWATCH_HOME/reports)")
    add_json_option(ap)
    args = ap.parse_args(argv)
    reports = args.reports or Settings().reports_dir
    common = dict(sources=tuple(args.sources.split(",")), n=args.n, max_tokens=args.max_tokens, seed=args.seed,
                  batch_size=args.batch_size, n_boot=args.n_boot)
    specs = {"labelled": RunSpec(args.model, task=ANSWERS, **common),
             "label_free": RunSpec(args.model, task=CONSISTENCY, n_samples=args.samples, temperature=args.temperature,
                                   top_p=args.top_p, **common)}
    engine = Engine(args.model)
    engine.start()
    runs = {}
    try:
        for arm, spec in specs.items():
            path, seconds, scored = timed_calibrate(engine, spec, reports / "labelfree_bench", reports)
            runs[arm] = {"params": path, "seconds": seconds, "scored": scored}
            print(f"{arm}: {path.name}, scored {scored} in {seconds:.0f} s", flush=True)
        test = RunSpec(args.model, task=ANSWERS, **common)
        ckpt = checkpoint_path(reports, engine.lm, test, "test")
        records = score_all(engine, test.samples("test", reports / "data")[0], test, ckpt)
    finally:
        engine.stop()
    states = states_by_position(load_states(ckpt, records))
    labels = [r["label"] for r in records]
    result = {"model": engine.lm.model_id, "dtype": engine.lm.dtype, "blas": engine.lm.blas,
              **{k: v for k, v in vars(args).items() if k not in ("json", "reports")}, "arms": {}}
    for arm, run in runs.items():
        params = json.loads(run["params"].read_text())
        result["arms"][arm] = {"params": run["params"].name, "train_cv_auroc": params.get("risk", {}).get("cv_auroc"),
                               "label_free": params["protocol"].get("label_free"),
                               "test": cell(params, run["params"].parent, records, states, args.n_boot, args.seed),
                               "scoring_seconds": run["seconds"], "scored": run["scored"]}
    lf, lab = (result["arms"][a] for a in ("label_free", "labelled"))
    skipped = [f"{arm}: {a['test']['skipped']}" for arm, a in result["arms"].items() if "skipped" in a["test"]]
    if skipped:  # e.g. a target of (nearly) one class: no selection, no risk to compare
        result["difference"] = {"skipped": "; ".join(skipped)}
    else:
        result["difference"] = paired_difference(risk_scores(runs["label_free"]["params"], records, states),
                                                 risk_scores(runs["labelled"]["params"], records, states),
                                                 labels, args.n_boot, args.seed)
        result["difference"].update(goal="≥ −0.05", **{"pass": result["difference"]["value"] >= -0.05})
    if lf["scored"] and lab["scored"]:
        per_sample, per_prompt = lab["scoring_seconds"] / lab["scored"], lf["scoring_seconds"] / lf["scored"]
        result["cost"] = {"s_per_labelled_sample": per_sample, "s_per_label_free_prompt": per_prompt,
                          "s_per_answer": per_prompt / (args.samples + 1), "ratio": per_prompt / per_sample,
                          "goal": f"≤ {args.samples + 1}", "pass": per_prompt / per_sample <= args.samples + 1}
    print(f"\n{result['model']} ({result['dtype']}, BLAS {result['blas']}), {args.n} train / {args.n} test questions "
          f"of {args.sources}, max_tokens {args.max_tokens}, batch {args.batch_size}; {machine()}")
    for arm, a in result["arms"].items():
        t = a["test"]
        print(f"  {arm:<10} skipped: {t['skipped']}" if "skipped" in t else
              f"  {arm:<10} {t['detector']}: test AUROC {t['auroc']:.3f} [{t['auroc_ci'][0]:.3f}, "
              f"{t['auroc_ci'][1]:.3f}], Brier {t['brier']:.3f} (base {t['brier_base_rate']:.3f}), "
              f"in range {t['in_distribution']}")
    d = result["difference"]
    print(f"  label-free − labelled AUROC: {d['skipped']}" if "skipped" in d else
          f"  label-free − labelled AUROC = {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]; "
          f"goal {d['goal']}: {'PASS' if d['pass'] else 'FAIL'}")
    if c := result.get("cost"):
        print(f"  cost: {c['s_per_labelled_sample']:.2f} s per labelled sample, {c['s_per_label_free_prompt']:.2f} s "
              f"per label-free prompt = {c['s_per_answer']:.2f} s per answer (greedy + {args.samples} "
              f"sampled); ratio {c['ratio']:.2f}, goal {c['goal']}: {'PASS' if c['pass'] else 'FAIL'}")
    write_json(args.json, "labelfree", result, argv)
    return 0


if __name__ == "__main__":
    exit_now(main())
