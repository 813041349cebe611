"""Label-free against labelled own-answer calibration: trained on the same questions, both tested
with gold labels on the same held-out split; and what each costs.

The labelled arm (`--task answers`) fits on the gold labels of the training questions; the
label-free arm (`--task consistency`) on whether K sampled answers agree with the greedy one,
gold labels unused. Both params are then scored on the test split's gold labels: the selected
detector's AUROC with its bootstrap 95% CI, Brier score and in-range share (as in the transfer
matrix), and the paired bootstrap CI of the AUROC difference; on every `--test` set (default: the
held-out split of the training sources), each multi-source set also source by source, and beside
them a `--reference` params file (e.g. the shipped labelled calibration). Cost: the scoring seconds of each
run (measured one after the other in this process, batched): seconds per labelled sample, per
label-free prompt and per answer generated (greedy or sampled); goal: a label-free prompt costs <= (K + 1) labelled
samples. Runs resume from the checkpoints in `--reports`; only what this run scored is timed.

    python bench/labelfree.py --n 150 --samples 5 --temperature 0.5 --json bench/results/labelfree.json
    python bench/labelfree.py --n 90 --test nq_open,halueval_closed,halueval_open:480 \
        --test bench/data/simple_questions.jsonl:150 --reference calibrated_params/PARAMS.json
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

from app.calibration.halueval import DatasetError  # noqa: E402
from app.calibration.questions import SOURCES  # noqa: E402
from app.calibration.runs import calibrate, saved_detector_scores, states_by_position  # noqa: E402
from app.calibration.scoring import ANSWERS, CONSISTENCY, RunSpec, checkpoint_path, load_states, score_all  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.settings import Settings  # noqa: E402
from signals.statistics import bootstrap_auroc_difference  # noqa: E402
from benchlib import add_json_option, exit_now, machine, write_json  # noqa: E402
from transfer_matrix import cell  # noqa: E402


def timed_calibrate(engine, spec: RunSpec, out: Path, reports: Path) -> dict:
    """{params path (None when calibrate refused the training samples, e.g. a target of one class,
    and `refused` says why), scoring seconds, samples scored by this run}: the seconds between the
    first progress report (checkpoint read) and the last (last batch written)."""
    marks, run = [], {"params": None}
    try:
        run["params"] = calibrate(engine, spec, out, reports,
                                  progress=lambda done, total: marks.append((time.perf_counter(), done)))
    except DatasetError as e:  # raised after scoring: the time is still measured
        run["refused"] = str(e)
    return {**run, "seconds": marks[-1][0] - marks[0][0], "scored": marks[-1][1] - marks[0][1]}


def risk_scores(path: Path, records: list, states: dict) -> np.ndarray:
    params = json.loads(Path(path).read_text())
    return np.asarray(saved_detector_scores(params, path.parent, records, states)[0][params["risk"]["detector"]])


def test_sets(specs: list, default: str) -> list:
    """(sources, n) of each `--test` spec 'SOURCES:N' (SOURCES comma-separated, as --sources)."""
    out = []
    for spec in specs or [default]:
        sources, _, n = spec.rpartition(":")
        if not sources or not n.isdigit():
            raise SystemExit(f"--test: expected SOURCES:N, got {spec!r}")
        out.append((tuple(sources.split(",")), int(n)))
    return out


def compare(params: dict, records: list, states: dict, args) -> dict:
    """Each arm's test cell on these records and the label-free − other AUROC differences (paired)."""
    cells = {arm: cell(json.loads(path.read_text()), path.parent, records, states, args.n_boot, args.seed)
             if path else {"skipped": "no params"} for arm, path in params.items()}
    labels = [r["label"] for r in records]
    out = {"n": len(records), "wrong": int(sum(labels)), "arms": cells, "difference": {}}
    for other in [a for a in params if a != "label_free"]:
        skipped = [f"{arm}: {cells[arm]['skipped']}" for arm in ("label_free", other) if "skipped" in cells[arm]]
        if skipped:  # e.g. a target of (nearly) one class: no selection, no risk to compare
            out["difference"][other] = {"skipped": "; ".join(skipped)}
            continue
        d = bootstrap_auroc_difference(risk_scores(params["label_free"], records, states),
                                       risk_scores(params[other], records, states), labels, args.n_boot, args.seed)
        out["difference"][other] = {"value": d["difference"], "ci": d["ci"], "goal": "≥ −0.05",
                                    "pass": d["difference"] >= -0.05}
    return out


def evaluate_on(engine, params: dict, sources: tuple, n: int, args, reports: Path) -> dict:
    """The comparison on the test split of `sources` (n questions); per source too when several."""
    spec = RunSpec(args.model, task=ANSWERS, sources=sources, n=n, max_tokens=args.max_tokens, seed=args.seed,
                   batch_size=args.batch_size, n_boot=args.n_boot, probes=args.probes)
    ckpt = checkpoint_path(reports, engine.lm, spec, "test")
    records = score_all(engine, spec.samples("test", reports / "data")[0], spec, ckpt)
    states = states_by_position(load_states(ckpt, records)) if args.probes else None
    out = {"sources": list(sources), **compare(params, records, states, args)}
    if len(sources) > 1:
        out["per_source"] = {}
        for task in dict.fromkeys(r["task"] for r in records):
            idx = [i for i, r in enumerate(records) if r["task"] == task]
            part = states and {position: s[idx] for position, s in states.items()}
            out["per_source"][task] = compare(params, [records[i] for i in idx], part, args)
    return out


def print_comparison(name: str, t: dict) -> None:
    print(f"  {name} (n = {t['n']}, {t['wrong']} wrong)")
    for arm, c in t["arms"].items():
        print(f"    {arm:<10} skipped: {c['skipped']}" if "skipped" in c else
              f"    {arm:<10} {c['detector']}: AUROC {c['auroc']:.3f} [{c['auroc_ci'][0]:.3f}, "
              f"{c['auroc_ci'][1]:.3f}], Brier {c['brier']:.3f} (base {c['brier_base_rate']:.3f}), "
              f"in range {c['in_distribution']}")
    for other, d in t["difference"].items():
        print(f"    label-free − {other}: {d['skipped']}" if "skipped" in d else
              f"    label-free − {other} AUROC = {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]; "
              f"goal {d['goal']}: {'PASS' if d['pass'] else 'FAIL'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--n", type=int, default=150, help="training questions (and test questions without --test)")
    ap.add_argument("--test", action="append", metavar="SOURCES:N",
                    help="a test set: the test split of these sources, N questions (repeatable; default: "
                         "the training sources, --n questions)")
    ap.add_argument("--reference", type=Path, help="a params file scored beside the two arms (not timed)")
    ap.add_argument("--samples", type=int, default=5, help="K: sampled answers per prompt (label-free)")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=8, help="questions (labelled) or prompts (label-free) a batch")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--no-probes", dest="probes", action="store_false",
                    help="both arms without probes, the test without block states (reuses records scored without)")
    ap.add_argument("--reports", type=Path, help="checkpoints and params (default: $HALLUWATCH_HOME/reports)")
    add_json_option(ap)
    args = ap.parse_args(argv)
    reports = args.reports or Settings().reports_dir
    tests = test_sets(args.test, f"{args.sources}:{args.n}")
    common = dict(sources=tuple(args.sources.split(",")), n=args.n, max_tokens=args.max_tokens, seed=args.seed,
                  batch_size=args.batch_size, n_boot=args.n_boot, probes=args.probes)
    specs = {"labelled": RunSpec(args.model, task=ANSWERS, **common),
             "label_free": RunSpec(args.model, task=CONSISTENCY, n_samples=args.samples, temperature=args.temperature,
                                   top_p=args.top_p, **common)}
    engine = Engine(args.model)
    engine.start()
    runs = {}
    try:
        for arm, spec in specs.items():
            runs[arm] = run = timed_calibrate(engine, spec, reports / "labelfree_bench", reports)
            print(f"{arm}: {run['params'].name if run['params'] else 'refused: ' + run['refused']}, "
                  f"scored {run['scored']} in {run['seconds']:.0f} s", flush=True)
        params = {arm: run["params"] for arm, run in runs.items()}
        if args.reference:
            params["reference"] = args.reference
        results = {",".join(sources) + f":{n}": evaluate_on(engine, params, sources, n, args, reports)
                   for sources, n in tests}
    finally:
        engine.stop()
    result = {"model": engine.lm.model_id, "dtype": engine.lm.dtype, "blas": engine.lm.blas,
              **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("json", "reports")}, "arms": {}, "tests": results}
    for arm, run in runs.items():
        p = json.loads(run["params"].read_text()) if run["params"] else {"protocol": {}}
        result["arms"][arm] = {"params": run["params"] and run["params"].name, "refused": run.get("refused"),
                               "risk": p.get("risk", {}).get("detector"),
                               "train_cv_auroc": p.get("risk", {}).get("cv_auroc"),
                               "selection_skipped": p.get("selection_skipped"),
                               "label_free": p["protocol"].get("label_free"),
                               "scoring_seconds": run["seconds"], "scored": run["scored"]}
    lf, lab = (result["arms"][a] for a in ("label_free", "labelled"))
    if lf["scored"] and lab["scored"]:
        per_sample, per_prompt = lab["scoring_seconds"] / lab["scored"], lf["scoring_seconds"] / lf["scored"]
        result["cost"] = {"s_per_labelled_sample": per_sample, "s_per_label_free_prompt": per_prompt,
                          "s_per_answer": per_prompt / (args.samples + 1), "ratio": per_prompt / per_sample,
                          "goal": f"≤ {args.samples + 1}", "pass": per_prompt / per_sample <= args.samples + 1}
    print(f"\n{result['model']} ({result['dtype']}, BLAS {result['blas']}), {args.n} training questions of "
          f"{args.sources}, max_tokens {args.max_tokens}, batch {args.batch_size}; {machine()}")
    for arm, a in result["arms"].items():
        print(f"  {arm}: risk {a['risk'] or 'none (' + str(a['refused'] or a['selection_skipped']) + ')'}")
    for name, t in results.items():
        print_comparison(name, t)
        for task, part in t.get("per_source", {}).items():
            print_comparison(f"{name}, {task} only", part)
    if c := result.get("cost"):
        print(f"  cost: {c['s_per_labelled_sample']:.2f} s per labelled sample, {c['s_per_label_free_prompt']:.2f} s "
              f"per label-free prompt = {c['s_per_answer']:.2f} s per answer (greedy + {args.samples} "
              f"sampled); ratio {c['ratio']:.2f}, goal {c['goal']}: {'PASS' if c['pass'] else 'FAIL'}")
    write_json(args.json, "labelfree", result, argv)
    return 0


if __name__ == "__main__":
    exit_now(main())
