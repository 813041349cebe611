"""Transfer matrix of own-answer calibration: train on each source, on all but one, and on all;
test on every source's held-out split.

Per cell: the selected detector's test AUROC with its bootstrap 95% CI, the Brier score of `risk`
(and of a constant base rate), the share of test prompts inside the probe's training range, and
the best single baseline (chosen by training CV AUROC, not on the test split) with its AUROC.
Scores come from the calibration checkpoints (`$HALLUWATCH_HOME/reports/scores`), so after one
calibrate/evaluate run on all sources only the fits are new. Writes JSON and Markdown.

    python bench/transfer_matrix.py --n-per-source 160 --max-tokens 32 --out reports/

`--n-test` tests on fewer questions per source than the calibrations train on (default: as many).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adapters  # noqa: E402,F401  (OpenBLAS before mlx)
import numpy as np  # noqa: E402

from app.calibration.questions import SOURCES  # noqa: E402
from app.calibration.report import auroc_with_ci, num  # noqa: E402
from app.calibration.runs import states_by_position, calibrate, saved_detector_scores  # noqa: E402
from app.calibration.scoring import ANSWERS, RunSpec, checkpoint_path, load_states, score_all  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.storage import write_atomic, write_json_atomic  # noqa: E402
from signals import detectors, selection  # noqa: E402


def train_sets(sources: list) -> list:
    """(name, sources) of every training set: all, all but one, each alone."""
    sets = [("all", sources)]
    if len(sources) > 2:
        sets += [(f"all but {s}", [t for t in sources if t != s]) for s in sources]
    return sets + [(s, [s]) for s in sources]


def _spec(args, sources: list, n: int) -> RunSpec:
    return RunSpec(args.model, task=ANSWERS, sources=tuple(sources), n=n, max_tokens=args.max_tokens, seed=args.seed,
                   batch_size=args.batch_size, n_boot=args.n_boot)


def _baseline(params: dict) -> str:
    """The best single-feature detector by training CV AUROC."""
    return max((n for n in params["ranking"] if isinstance(detectors.get(n), detectors.Feature)),
               key=lambda n: params["detectors"][n]["cv_auroc"])


def cell(params: dict, params_dir: Path, records: list, states: dict, n_boot: int, seed: int) -> dict:
    labels = np.array([r["label"] for r in records])
    if "risk" not in params:
        return {"skipped": params.get("selection_skipped")}
    if labels.min() == labels.max():
        return {"skipped": f"the test split holds one class only ({int(labels[0])})"}
    scores, probes = saved_detector_scores(params, params_dir, records, states)
    chosen, baseline = params["risk"]["detector"], _baseline(params)
    if chosen not in scores:  # a probe, and no block states given
        return {"skipped": f"{chosen} needs the block states"}
    shown = {name: scores[name] for name in (chosen, baseline)}  # the bootstrap of every detector is slow
    found = selection.evaluate_detectors(shown, labels, params, n_boot=n_boot, seed=seed)
    inside = None
    ranged = params.get("range_probe", params.get("probe"))
    if ranged in probes:  # the calibration's range, read by its range probe, whichever detector gives the risk
        probe = probes[ranged]
        inside = float(np.mean(probe.distance_in(states) <= probe.distance_limit))
    return {"detector": chosen, **{k: found["detectors"][chosen][k] for k in ("auroc", "auroc_ci")},
            "brier": found["risk"]["brier"], "brier_base_rate": found["risk"]["brier_base_rate"],
            "in_distribution": inside, "baseline": baseline, "baseline_auroc": found["detectors"][baseline]["auroc"],
            "n": len(labels), "wrong": int(labels.sum())}


def markdown(matrix: dict, meta: dict) -> str:
    lines = ["# Own-answer calibration: transfer matrix", "",
             f"Model {meta['model']}; {meta['n_per_source']} training and {meta.get('n_test', meta['n_per_source'])} "
             "test questions per source, greedy chat answers "
             f"of up to {meta['max_tokens']} tokens, labelled by `alias_in_answer`. Each cell: the selected "
             "detector's test AUROC [95% CI], the Brier score of `risk` (constant base rate in brackets), the share "
             "of test prompts inside the probe's training range, and the best single baseline by training CV.", "",
             "| trained on | tested on | selected | AUROC [95% CI] | Brier (base) | in range | best baseline: AUROC |",
             "|---|---|---|---|---|---:|---|"]
    for train, row in matrix.items():
        for test, c in row.items():
            if "skipped" in c:
                lines.append(f"| {train} | {test} | — | skipped: {c['skipped']} | | | |")
                continue
            lines.append(f"| {train} | {test} | {c['detector']} | {auroc_with_ci(c)} | {c['brier']:.3f} "
                         f"({c['brier_base_rate']:.3f}) | {num(c['in_distribution'], '.0%')} "
                         f"| {c['baseline']}: {c['baseline_auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--n-per-source", type=int, default=160, help="training questions per source")
    ap.add_argument("--n-test", type=int, help="test questions per source (default: --n-per-source)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True, help="folder of transfer_<model>.json and .md")
    args = ap.parse_args(argv)
    sources = args.sources.split(",")
    settings = Settings()
    engine = Engine(args.model)
    engine.start()
    try:
        tests = {}
        for s in sources:  # each source's test split, scored once (reused from an evaluate run if present)
            spec = _spec(args, [s], args.n_test or args.n_per_source)
            ckpt = checkpoint_path(settings.reports_dir, engine.lm, spec, "test")
            records = score_all(engine, spec.samples("test", settings.reports_dir / "data")[0], spec, ckpt)
            tests[s] = records, states_by_position(load_states(ckpt, records))
        matrix = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, train in train_sets(sources):
                spec = _spec(args, train, args.n_per_source * len(train))
                path = calibrate(engine, spec, Path(tmp) / name, settings.reports_dir)
                params = json.loads(path.read_text())
                matrix[name] = {s: cell(params, path.parent, *tests[s], args.n_boot, args.seed) for s in sources}
                print(name, {s: c.get("auroc") for s, c in matrix[name].items()}, flush=True)
    finally:
        engine.stop()
    meta = {"model": engine.lm.model_id, "n_per_source": args.n_per_source, "n_test": args.n_test or args.n_per_source,
            "max_tokens": args.max_tokens,
            "seed": args.seed, "sources": sources}
    stem = f"transfer_{engine.lm.model_id.lower()}"
    write_json_atomic(args.out / f"{stem}.json", {**meta, "matrix": matrix})
    print(write_atomic(args.out / f"{stem}.md", markdown(matrix, meta)))


if __name__ == "__main__":
    main()
