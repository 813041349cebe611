"""Calibration and validation runs: score HaluEval samples (scoring.py), then fit thresholds
and detectors and write params bound to the model (calibrate), or check saved params on the test
split and write the report (evaluate)."""

import contextlib
import json
from datetime import datetime, UTC
from importlib import metadata as pkg_metadata
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from signals import detectors, selection
from signals import statistics as stats
from signals.ranking import auroc
from signals.probe import STATE_ROWS, layer_test_auroc, source_balanced_weights

from ..engine import Engine
from ..storage import write_atomic, write_json_atomic
from . import logged
from .drift_reference import drift_reference
from .halueval import DatasetError
from .questions import LABEL_RULE
from .probe_files import load_probe, save_probe
from . import labelfree
from .scoring import ANSWERS, CONSISTENCY, RunSpec, checkpoint_path, load_states, read_checkpoint, score_all, slug


def _arrays(records: list) -> tuple:
    return (np.array([r["hbar_s"] for r in records]), np.array([r["pri"] for r in records]),
            np.array([r["label"] for r in records]))


def _features(records: list) -> dict:
    """Each single-feature detector's input, one value per record."""
    rows = [detectors.features(r, r["verdict"]) for r in records]
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


def states_by_position(states: np.ndarray) -> dict:
    """(n, 4, L, D) saved states → {row name (STATE_ROWS): (n, L, D)}."""
    return {name: states[:, i] for i, name in enumerate(STATE_ROWS)}


def _select(records: list, labels: np.ndarray, states: dict | None, seed: int, out_dir: Path, stem: str) -> dict:
    """Rank all detectors on the training records, save the probes; the params' detector keys
    (only a note of why, when the samples are too few)."""
    if (reason := selection.too_few(labels)) is not None:
        return {"selection_skipped": reason}
    with threadpool_limits(1):  # many small fits: one BLAS thread each is several times faster
        chosen = selection.select_detectors(_features(records), labels, states, seed,
                                            groups=[r["task"] for r in records])  # the source of each sample
    for position, probe in chosen["probes"].items():
        name = detectors.probe_for(position).name
        path = Path(out_dir) / f"{stem}_{name}.npz"
        chosen["detectors"][name].update(file=path.name, sha256=save_probe(probe, path))
    return {"detectors": chosen["detectors"], "ranking": chosen["ranking"], "risk": chosen["risk"],
            "probe": selection.served_probe(chosen["ranking"], chosen["risk"]["detector"]),
            "range_probe": selection.range_probe(chosen["ranking"], chosen["risk"]["detector"]),
            "drift_reference": drift_reference(chosen, states)}


def _versions() -> dict:
    out = {}
    for pkg in ("halluwatch", "mlx", "mlx-lm", "numpy", "scikit-learn"):
        try:
            out[pkg] = pkg_metadata.version(pkg)
        except pkg_metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def calibrate(engine: Engine, spec: RunSpec, out_dir: Path, reports_dir: Path, **hooks) -> Path:
    """Score the train split, fit thresholds, the joint model and (with `spec.probes`) the probes,
    rank every detector, write the params file (probe files beside it); return its path.

    `hooks` go to `score_all` (progress, cancelled).
    """
    samples, split = spec.samples("train", Path(reports_dir) / "data")
    ckpt = checkpoint_path(reports_dir, engine.lm, spec, "train")
    records = score_all(engine, samples, spec, ckpt, **hooks)
    hbar, pri, labels = _arrays(records)
    try:
        result = stats.calibrate(hbar, pri, labels, seed=spec.seed, n_boot=spec.n_boot)
    except ValueError as e:  # e.g. the model answered (nearly) every question right, or every one wrong
        raise DatasetError(f"{np.count_nonzero(labels == 0)} of the {len(labels)} training samples are labelled "
                           f"{'consistent' if spec.task == CONSISTENCY else 'correct'}: {e}; score more samples, "
                           "or sources the model answers more evenly",
                           "n") from None
    now = _utc_now()
    stem = f"{slug(engine.lm.model_id)}_{now:%Y%m%dT%H%M%SZ}_n{spec.n}"
    states = states_by_position(load_states(ckpt, records)) if spec.probes else None
    try:
        result.update(_select(records, labels, states, spec.seed, out_dir, stem))
        split_path = write_json_atomic(Path(reports_dir) / f"{stem}_split.json", split)
        params = {
            "model": engine.lm.model_id,
            "model_fingerprint": engine.lm.fingerprint.as_dict(),
            **result,
            "model_ref": spec.model_ref,
            "source": "halluwatch calibrate",
            "created_utc": now.isoformat().replace("+00:00", "Z"),
            "task": spec.task,
            "n": spec.n,
            "protocol": {**_dataset(spec), "task": spec.task, "split": "train", "split_seed": spec.seed,
                         "max_tokens": spec.max_tokens, "prompt_format": spec.prompt_format,
                         "greedy": True, "reductions": "float32", "dtype": engine.lm.dtype,
                         **({"label_free": labelfree.protocol(spec, records)} if spec.task == CONSISTENCY else {})},
            "versions": _versions(),
            "scores_file": _relative(ckpt, reports_dir),
            "split_file": _relative(split_path, reports_dir),
        }
        return write_json_atomic(Path(out_dir) / f"{stem}.json", params)
    except BaseException:  # no params file: leave none of its probe files behind either
        for probe_file in Path(out_dir).glob(f"{stem}_*.npz"):
            probe_file.unlink(missing_ok=True)
        raise


def evaluate(engine: Engine, params_path: Path, spec: RunSpec, out_dir: Path, reports_dir: Path,
             **hooks) -> Path:
    """Score the test split, check the saved thresholds and every saved detector on it, write the
    report (JSON, Markdown, figures). The params may come from another task (transfer)."""
    from . import report

    params = json.loads(Path(params_path).read_text())
    samples, split = spec.samples("test", Path(reports_dir) / "data")
    ckpt = checkpoint_path(reports_dir, engine.lm, spec, "test")
    records = score_all(engine, samples, spec, ckpt, **hooks)
    hbar, pri, labels = _arrays(records)
    metrics = stats.evaluate(hbar, pri, labels, params, seed=spec.seed, n_boot=spec.n_boot)
    scores = {}
    if "ranking" in params:  # params with the detector selection (older params have only the seed signals)
        train_spec = _training_spec(params, spec)
        train = train_spec.samples("train", Path(reports_dir) / "data")[0]
        test_states = states_by_position(load_states(ckpt, records)) if spec.probes else None
        scores, probes = saved_detector_scores(params, Path(params_path).parent, records, test_states)
        if probes:
            train_ckpt = checkpoint_path(reports_dir, engine.lm, train_spec, "train")
            metrics["probe_layers"] = _layer_curves(params, probes, test_states, labels, train, train_ckpt)
        evaluated = selection.evaluate_detectors(scores, labels, params, n_boot=spec.n_boot, seed=spec.seed)
        metrics["all_detectors"], metrics["risk"] = evaluated["detectors"], evaluated.get("risk")
        if not {spec.task, params["task"]} & {ANSWERS, CONSISTENCY}:  # judged answers of HaluEval have a length
            metrics["answer_length"] = _length_check(samples, train, labels, scores, metrics["all_detectors"], spec)
    stem = f"{Path(params_path).stem}_eval_{spec.label}_n{spec.n}"
    figures = report.write_figures(records, params, metrics, scores, out_dir, stem)
    meta = {"model": engine.lm.model_id, "params": Path(params_path).name, "params_task": params.get("task"),
            "task": spec.task, "n": spec.n, "seed": spec.seed, "max_tokens": spec.max_tokens,
            "prompt_format": spec.prompt_format, "scores_file": _relative(ckpt, reports_dir),
            "created_utc": _utc_now().isoformat().replace("+00:00", "Z")}
    body = {**meta, "split": split, "metrics": metrics, "figures": [p.name for p in figures]}
    write_atomic(Path(out_dir) / f"{stem}.md", report.markdown(metrics, params, meta, [p.name for p in figures]))
    return write_json_atomic(Path(out_dir) / f"{stem}.json", body)


def saved_detector_scores(params: dict, params_dir: Path, records: list, states: dict | None) -> tuple:
    """Every detector of saved params scored on these records, probes on their `states` (position →
    (n, L, D)) when given: ({name: scores}, {position: Probe})."""
    feats = _features(records)
    probes = _load_probes(params, params_dir) if states is not None else {}
    for position, probe in probes.items():
        feats[detectors.probe_for(position).name] = probe.logit(states[position])
    return selection.detector_scores(feats, params), probes


def _words(samples: list) -> np.ndarray:
    return np.array([len(s.answer.split()) for s in samples])


def _training_spec(params: dict, spec: RunSpec) -> RunSpec:
    """The run the params were calibrated by (a transfer run reads the default copy of their task)."""
    protocol = params["protocol"]
    return RunSpec(params.get("model_ref", ""), task=params["task"], n=params["n"], seed=protocol["split_seed"],
                   max_tokens=protocol["max_tokens"], prompt_format=protocol["prompt_format"],
                   dataset=spec.dataset if params["task"] == spec.task else None,
                   sources=tuple(protocol.get("sources", ())), shares=tuple(protocol.get("shares", ())),
                   **labelfree.run_options(protocol))


def _dataset(spec: RunSpec) -> dict:
    """What the params' protocol says of the data."""
    if spec.task == ANSWERS:
        return {"dataset": "own answers", "sources": list(spec.sources), **_shares(spec), "label_rule": LABEL_RULE}
    if spec.task == logged.LOGGED:
        return {"dataset": "response log", "label_rule": logged.LABEL_RULE}
    if spec.task == CONSISTENCY:  # labelled by the samples' agreement: protocol["label_free"]
        return {"dataset": "deployment prompts", "sources": list(spec.sources), **_shares(spec)}
    return {"dataset": "HaluEval"}


def _shares(spec: RunSpec) -> dict:
    return {"shares": list(spec.shares)} if spec.shares else {}


def _length_check(samples: list, train: list, labels, scores: dict, detectors: dict, spec: RunSpec) -> dict:
    """HaluEval's hallucinated answers are often longer than the right ones, so a detector may
    find length rather than hallucination. Reports the model-free reference "words in the judged
    answer" (direction from the training samples `train`) and adds to each detector its AUROC over
    pairs whose answers have the same number of words."""
    direction = 1 if auroc([s.label for s in train], _words(train)) >= 0.5 else -1
    words = _words(samples)
    pairs = 0
    for name, d in detectors.items():
        d["auroc_same_length"], pairs = stats.same_stratum_auroc(scores[name], labels, words)
    m = stats.detector_metrics(direction * words, labels, spec.n_boot, spec.seed)
    return {"direction": direction, "auroc": m["auroc"], "auroc_ci": m["auroc_ci"], "pr_auc": m["pr_auc"],
            "precision_at_recall_0_9": m["precision"], "same_length_pairs": pairs,
            "all_pairs": int(np.sum(labels == 1)) * int(np.sum(labels == 0))}


def _load_probes(params: dict, params_dir: Path) -> dict:
    """The params' probe files by position, each checked against its SHA-256."""
    return {detectors.get(name).position: load_probe(params_dir / entry["file"], entry["sha256"])
            for name, entry in params["detectors"].items() if detectors.is_probe(name)}


def _layer_curves(params: dict, probes: dict, test_states: dict, labels, samples: list, train_ckpt: Path) -> dict:
    """Per position: the training CV AUROC of each layer's probe and (when the states of the
    training `samples` are at hand) that probe's AUROC on these test samples: evidence of where the
    signal lives; and the share of test states within the served probe's training range."""
    done = read_checkpoint(train_ckpt)
    train = [done[s.key] for s in samples if s.key in done]
    train_states = None
    if len(train) == len(samples):
        with contextlib.suppress(OSError):  # states not kept (--no-probes, or cleaned up): no test curve
            train_states = states_by_position(load_states(train_ckpt, train))
    curves = {}
    for position in probes:
        entry = params["detectors"][detectors.probe_for(position).name]
        probe = probes[position]
        inside = (float(np.mean(probe.distance_in(test_states) <= probe.distance_limit))
                  if probe.distance_limit is not None else None)
        curves[position] = {"layer": entry["layer"], "train_cv_auroc": entry["layer_cv_auroc"], "test_auroc": None,
                            "in_distribution": inside}
        if train_states is not None:
            with threadpool_limits(1):
                train_labels = [r["label"] for r in train]
                curves[position]["test_auroc"] = layer_test_auroc(
                    train_states[position], train_labels, test_states[position], labels, entry["layer_C"],
                    source_balanced_weights(train_labels, [r["task"] for r in train]))
    return curves


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root`'s parent when it lies below it (portable in committed reports)."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve().parent))
    except ValueError:
        return str(path)
