"""Calibration and validation runs: score HaluEval samples with the engine, then fit or check.

Scoring reuses the engine's generation and signals (greedy, raw `tokenizer.encode` prompts by
default, as in the reference protocol). Each scored sample is appended to a JSONL checkpoint and
fsynced, so an interrupted run loses nothing and a re-run resumes where it stopped.
"""

import io
import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from signals import statistics as stats
from signals import detectors, selection
from signals.probe import POSITIONS, layer_test_auroc

from signals.response import response_scores

from ..engine import Cancelled, Engine, GenerationJob
from ..prompts import encode_prompt
from .halueval import Sample, load_samples
from .probe_files import load_probe, save_probe
from ..storage import write_atomic, write_bytes_atomic, write_json_atomic

PROMPT_FORMATS = ("raw", "chat")


@dataclass
class RunSpec:
    """What to score: model, task, split, size and protocol options."""

    model_ref: str
    task: str = "qa"
    n: int = 200
    max_tokens: int = 20
    seed: int = 42
    prompt_format: str = "raw"
    dataset: str | None = None
    n_boot: int = 1000
    batch_size: int = 1  # >1 scores that many samples per engine job (batched decode; higher throughput)
    probes: bool = True  # capture block outputs at the prompt's end and the last step; fit probes on them


def slug(text: str) -> str:
    """A file-name-safe form of a model id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.rsplit("/", 1)[-1]).strip("-").lower() or "model"


def checkpoint_path(reports_dir: Path, lm, spec: RunSpec, split: str) -> Path:
    """Where the scores of this model/task/split/protocol go; the same run of the same model (by
    fingerprint, not by name) always finds it again, and no other model's run ever does."""
    name = (f"{slug(lm.model_id)}-{lm.fingerprint.id}_{spec.task}_{split}_seed{spec.seed}_mt{spec.max_tokens}_"
            f"{spec.prompt_format}.jsonl")
    return Path(reports_dir) / "scores" / name


def states_dir(checkpoint: Path) -> Path:
    """Where the block outputs of a checkpoint's samples go: one .npy per sample, (2, L, D) float32
    holding the last-position output of every block at step 0 (prompt end) and at the last step."""
    return Path(checkpoint).with_name(Path(checkpoint).stem + "_states")


def _states_path(checkpoint: Path, key: str) -> Path:
    return states_dir(checkpoint) / (key.replace(":", "_") + ".npy")


def load_states(checkpoint: Path, records: list) -> np.ndarray:
    """The saved block outputs of these records, shape (n, 2, L, D) (positions as in POSITIONS)."""
    return np.stack([np.load(_states_path(checkpoint, r["key"])) for r in records])


def read_checkpoint(path: Path) -> dict:
    """Scored records by sample key; a torn last line (a crash mid-write) is ignored."""
    done = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            done[rec["key"]] = rec
    return done


def _encode(engine: Engine, sample: Sample, spec: RunSpec) -> list:
    return encode_prompt(engine.lm, sample.prompt, None, spec.prompt_format == "chat", spec.max_tokens)


def _score_record(sample: Sample, records: list, fin) -> dict:
    return {
        "key": sample.key, "task": sample.task, "item": sample.item, "label": sample.label,
        **response_scores(records).as_dict(),
        "tokens": len(records), "finish_reason": fin.finish_reason,
        "text": "".join(r.text for r in records) + fin.text_tail,
        "token_ids": [r.token_id for r in records],
        "verdict": records[0].verdict,  # step-0 mass on "Yes"/"No": the model's own judgment
        "steps": {"hbar_s": [r.hbar_s for r in records], "pri": [r.pri for r in records]},
    }


def score_batch(engine: Engine, samples: list, spec: RunSpec) -> list:
    """Score records (response scores + per-step trajectories) of these samples.

    One sample goes through the same pipelined path as /generate; several go as one batch job.
    """
    jobs = [GenerationJob(_encode(engine, s, spec), spec.max_tokens, priority=1, capture_hidden=spec.probes)
            for s in samples]
    handles = [engine.submit(jobs[0])] if len(jobs) == 1 else engine.submit_batch(jobs)
    results = [h.wait() for h in handles]  # Cancelled if the engine stopped
    return [(_score_record(s, records, fin), _states(records) if spec.probes else None)
            for s, (records, fin) in zip(samples, results)]


def _states(records: list) -> np.ndarray:
    return np.stack([records[0].hidden, records[-1].hidden])


def score_all(engine: Engine, samples: list, spec: RunSpec, checkpoint: Path,
              progress: Callable[[int, int], None] = lambda done, total: None,
              cancelled: threading.Event | None = None) -> list:
    """Score every sample not yet in `checkpoint`, `spec.batch_size` at a time, appending each record.

    With `spec.probes`, each sample's block outputs are saved (see `states_dir`) before its record,
    and a sample whose states are missing is scored again.
    """
    done = read_checkpoint(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    todo = [s for s in samples
            if s.key not in done or (spec.probes and not _states_path(checkpoint, s.key).exists())]
    progress(len(samples) - len(todo), len(samples))
    with open(checkpoint, "a") as f:
        for start in range(0, len(todo), spec.batch_size):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled(f"cancelled after {len(samples) - len(todo) + start} of {len(samples)} samples")
            for rec, states in score_batch(engine, todo[start:start + spec.batch_size], spec):
                if states is not None:
                    buf = io.BytesIO()
                    np.save(buf, states)
                    write_bytes_atomic(_states_path(checkpoint, rec["key"]), buf.getvalue())
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[rec["key"]] = rec
            f.flush()
            os.fsync(f.fileno())
            progress(len(samples) - len(todo) + min(start + spec.batch_size, len(todo)), len(samples))
    return [done[s.key] for s in samples]


def _arrays(records: list) -> tuple:
    return (np.array([r["hbar_s"] for r in records]), np.array([r["pri"] for r in records]),
            np.array([r["label"] for r in records]))


def _features(records: list) -> dict:
    """Each single-feature detector's input, one value per record."""
    rows = [detectors.features(r, r["verdict"]) for r in records]
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


def _positions(states: np.ndarray) -> dict:
    """(n, 2, L, D) saved states → {position: (n, L, D)}."""
    return {position: states[:, i] for i, position in enumerate(POSITIONS)}


def _select(records: list, labels: np.ndarray, states: dict | None, seed: int, out_dir: Path, stem: str) -> dict:
    """Rank all detectors on the training records, save the probes; the params' detector keys
    (only a note of why, when the samples are too few)."""
    if (reason := selection.too_few(labels)) is not None:
        return {"selection_skipped": reason}
    with threadpool_limits(1):  # many small fits: one BLAS thread each is several times faster
        chosen = selection.select_detectors(_features(records), labels, states, seed)
    for position, probe in chosen["probes"].items():
        name = detectors.probe_for(position).name
        path = Path(out_dir) / f"{stem}_{name}.npz"
        chosen["detectors"][name].update(file=path.name, sha256=save_probe(probe, path))
    probes = [name for name in chosen["ranking"] if detectors.is_probe(name)]
    return {"detectors": chosen["detectors"], "ranking": chosen["ranking"], "risk": chosen["risk"],
            "probe": detectors.get(probes[0]).position if probes else None}


def _versions() -> dict:
    out = {}
    for pkg in ("halluwatch", "mlx", "mlx-lm", "numpy", "scikit-learn"):
        try:
            out[pkg] = pkg_metadata.version(pkg)
        except pkg_metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def calibrate(engine: Engine, spec: RunSpec, out_dir: Path, reports_dir: Path, **hooks) -> Path:
    """Score the train split, fit thresholds, the joint model and (with `spec.probes`) the probes,
    rank every detector, write the params file (probe files beside it); return its path.

    `hooks` go to `score_all` (progress, cancelled).
    """
    samples, split = load_samples(spec.task, "train", spec.n, spec.seed, spec.dataset, Path(reports_dir) / "data")
    ckpt = checkpoint_path(reports_dir, engine.lm, spec, "train")
    records = score_all(engine, samples, spec, ckpt, **hooks)
    hbar, pri, labels = _arrays(records)
    result = stats.calibrate(hbar, pri, labels, seed=spec.seed, n_boot=spec.n_boot)
    now = _utc_now()
    stem = f"{slug(engine.lm.model_id)}_{now:%Y%m%dT%H%M%SZ}_n{spec.n}"
    states = _positions(load_states(ckpt, records)) if spec.probes else None
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
            "protocol": {"dataset": "HaluEval", "task": spec.task, "split": "train", "split_seed": spec.seed,
                         "max_tokens": spec.max_tokens, "prompt_format": spec.prompt_format,
                         "greedy": True, "reductions": "float32", "dtype": engine.lm.dtype},
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
    samples, split = load_samples(spec.task, "test", spec.n, spec.seed, spec.dataset, Path(reports_dir) / "data")
    ckpt = checkpoint_path(reports_dir, engine.lm, spec, "test")
    records = score_all(engine, samples, spec, ckpt, **hooks)
    hbar, pri, labels = _arrays(records)
    metrics = stats.evaluate(hbar, pri, labels, params, seed=spec.seed, n_boot=spec.n_boot)
    scores = {}
    if "ranking" in params:  # params with the detector selection (issue 4 onwards)
        feats = _features(records)
        train = _training_samples(params, spec, reports_dir)
        if spec.probes:
            test_states = _positions(load_states(ckpt, records))
            probes = _load_probes(params, Path(params_path).parent)
            for position, probe in probes.items():
                feats[detectors.probe_for(position).name] = probe.logit(test_states[position])
            metrics["probe_layers"] = _layer_curves(params, probes, test_states, labels, engine, train, reports_dir)
        scores = selection.detector_scores(feats, params)
        evaluated = selection.evaluate_detectors(scores, labels, params, n_boot=spec.n_boot, seed=spec.seed)
        metrics["all_detectors"], metrics["risk"] = evaluated["detectors"], evaluated.get("risk")
        metrics["answer_length"] = _length_check(samples, train, labels, scores, metrics["all_detectors"], spec)
    stem = f"{Path(params_path).stem}_eval_{spec.task}_n{spec.n}"
    figures = report.write_figures(records, params, metrics, scores, out_dir, stem)
    meta = {"model": engine.lm.model_id, "params": Path(params_path).name, "params_task": params.get("task"),
            "task": spec.task, "n": spec.n, "seed": spec.seed, "max_tokens": spec.max_tokens,
            "prompt_format": spec.prompt_format, "scores_file": _relative(ckpt, reports_dir),
            "created_utc": _utc_now().isoformat().replace("+00:00", "Z")}
    body = {**meta, "split": split, "metrics": metrics, "figures": [p.name for p in figures]}
    write_atomic(Path(out_dir) / f"{stem}.md", report.markdown(metrics, params, meta, [p.name for p in figures]))
    return write_json_atomic(Path(out_dir) / f"{stem}.json", body)


def _words(samples: list) -> np.ndarray:
    return np.array([len(s.answer.split()) for s in samples])


def _training_samples(params: dict, spec: RunSpec, reports_dir: Path) -> list:
    """The samples the params were calibrated on (a transfer run reads the default copy of their task)."""
    dataset = spec.dataset if params["task"] == spec.task else None
    return load_samples(params["task"], "train", params["n"], params["protocol"]["split_seed"], dataset,
                        Path(reports_dir) / "data")[0]


def _length_check(samples: list, train: list, labels, scores: dict, detectors: dict, spec: RunSpec) -> dict:
    """HaluEval's hallucinated answers are often longer than the right ones, so a detector may
    find length rather than hallucination. Reports the model-free reference "words in the judged
    answer" (direction from the training samples `train`) and adds to each detector its AUROC over
    pairs whose answers have the same number of words."""
    direction = 1 if roc_auc_score([s.label for s in train], _words(train)) >= 0.5 else -1
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


def _layer_curves(params: dict, probes: dict, test_states: dict, labels, engine: Engine, samples: list,
                  reports_dir: Path) -> dict:
    """Per position: the training CV AUROC of each layer's probe and (when the states of the
    training `samples` are at hand) that probe's AUROC on these test samples: evidence of where the
    signal lives; and the share of test states within the served probe's training range."""
    protocol = params["protocol"]
    train_spec = RunSpec(params.get("model_ref", ""), task=params["task"], n=params["n"], seed=protocol["split_seed"],
                         max_tokens=protocol["max_tokens"], prompt_format=protocol["prompt_format"])
    train_ckpt = checkpoint_path(reports_dir, engine.lm, train_spec, "train")
    done = read_checkpoint(train_ckpt)
    train = [done[s.key] for s in samples if s.key in done]
    train_states = None
    if len(train) == len(samples):
        try:
            train_states = _positions(load_states(train_ckpt, train))
        except OSError:
            pass
    curves = {}
    for position in probes:
        entry = params["detectors"][detectors.probe_for(position).name]
        probe = probes[position]
        inside = (float(np.mean(probe.distance(test_states[position]) <= probe.distance_limit))
                  if probe.distance_limit is not None else None)
        curves[position] = {"layer": entry["layer"], "train_cv_auroc": entry["layer_cv_auroc"], "test_auroc": None,
                            "in_distribution": inside}
        if train_states is not None:
            with threadpool_limits(1):
                curves[position]["test_auroc"] = layer_test_auroc(
                    train_states[position], [r["label"] for r in train], test_states[position], labels,
                    entry["layer_C"])
    return curves


def _relative(path: Path, root: Path) -> str:
    """`path` relative to `root`'s parent when it lies below it (portable in committed reports)."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve().parent))
    except ValueError:
        return str(path)
