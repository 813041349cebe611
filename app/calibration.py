"""Calibration and validation runs: score HaluEval samples with the engine, then fit or check.

Scoring reuses the engine's generation and signals (greedy, raw `tokenizer.encode` prompts by
default, as in the reference protocol). Each scored sample is appended to a JSONL checkpoint and
fsynced, so an interrupted run loses nothing and a re-run resumes where it stopped.
"""

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

from signals import calibration as stats

from .engine import BatchJob, Engine, GenerationJob, run_once, run_blocking
from .generation import encode_prompt, response_body
from .halueval import Sample, load_samples
from .storage import write_atomic, write_json_atomic

PROMPT_FORMATS = ("raw", "chat")


class Cancelled(RuntimeError):
    """The run was cancelled; its checkpoint is kept."""


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


def slug(text: str) -> str:
    """A file-name-safe form of a model id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.rsplit("/", 1)[-1]).strip("-").lower() or "model"


def checkpoint_path(reports_dir: Path, model_id: str, spec: RunSpec, split: str) -> Path:
    """Where the scores of this model/task/split/protocol go; the same run always finds it again."""
    name = f"{slug(model_id)}_{spec.task}_{split}_seed{spec.seed}_mt{spec.max_tokens}_{spec.prompt_format}.jsonl"
    return Path(reports_dir) / "scores" / name


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
    if fin.finish_reason == "cancelled":
        raise Cancelled("the engine stopped")
    body = response_body(records, fin, None, None, include_trace=False)
    return {
        "key": sample.key, "task": sample.task, "item": sample.item, "label": sample.label,
        **body["scores"],
        "tokens": len(records), "finish_reason": fin.finish_reason, "text": body["text"],
        "token_ids": [r.token_id for r in records],
        "verdict": records[0].verdict,  # step-0 mass on "Yes"/"No": the model's own judgment
        "steps": {"hbar_s": [r.hbar_s for r in records], "pri": [r.pri for r in records]},
    }


def score_batch(engine: Engine, samples: list, spec: RunSpec) -> list:
    """Score records (response scores + per-step trajectories) of these samples.

    One sample goes through the same pipelined path as /generate; several go as one batch job.
    """
    prompts = [_encode(engine, s, spec) for s in samples]
    if len(samples) == 1:
        results = [run_blocking(engine, GenerationJob(prompts[0], spec.max_tokens, priority=1))]
    else:
        results = run_once(engine, BatchJob(prompts, spec.max_tokens, priority=1))
    return [_score_record(s, records, fin) for s, (records, fin) in zip(samples, results)]


def score_all(engine: Engine, samples: list, spec: RunSpec, checkpoint: Path,
              progress: Callable[[int, int], None] = lambda done, total: None,
              cancelled: threading.Event | None = None) -> list:
    """Score every sample not yet in `checkpoint`, `spec.batch_size` at a time, appending each record."""
    done = read_checkpoint(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    todo = [s for s in samples if s.key not in done]
    progress(len(samples) - len(todo), len(samples))
    with open(checkpoint, "a") as f:
        for start in range(0, len(todo), spec.batch_size):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled(f"cancelled after {len(samples) - len(todo) + start} of {len(samples)} samples")
            for rec in score_batch(engine, todo[start:start + spec.batch_size], spec):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[rec["key"]] = rec
            f.flush()
            os.fsync(f.fileno())
            progress(len(samples) - len(todo) + min(start + spec.batch_size, len(todo)), len(samples))
    return [done[s.key] for s in samples]


def _arrays(records: list) -> tuple:
    return (np.array([r["hbar_s"] for r in records]), np.array([r["pri"] for r in records]),
            np.array([r["label"] for r in records]))


BASELINES = ("surprise_mean", "surprise_max", "entropy_mean", "entropy_max", "prob_min")


def _baselines(records: list) -> dict:
    """Baseline scores present in every record: response aggregates and the step-0 Yes/No mass."""
    out = {name: [r[name] for r in records] for name in BASELINES if all(name in r for r in records)}
    if all(r.get("verdict") for r in records):
        for name in ("p_no", "p_yes"):
            out[f"verdict_{name}"] = [r["verdict"][name] for r in records]
    return out


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
    """Score the train split, fit thresholds and the joint model, write the params file; return its path.

    `hooks` go to `score_all` (progress, cancelled).
    """
    samples, split = load_samples(spec.task, "train", spec.n, spec.seed, spec.dataset, Path(reports_dir) / "data")
    ckpt = checkpoint_path(reports_dir, engine.lm.model_id, spec, "train")
    records = score_all(engine, samples, spec, ckpt, **hooks)
    result = stats.calibrate(*_arrays(records), seed=spec.seed, n_boot=spec.n_boot, baselines=_baselines(records))
    now = _utc_now()
    stem = f"{slug(engine.lm.model_id)}_{now:%Y%m%dT%H%M%SZ}_n{spec.n}"
    split_path = write_json_atomic(Path(reports_dir) / f"{stem}_split.json", split)
    params = {
        "model": engine.lm.model_id,
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
        "scores_file": str(ckpt),
        "split_file": str(split_path),
    }
    return write_json_atomic(Path(out_dir) / f"{stem}.json", params)


def evaluate(engine: Engine, params_path: Path, spec: RunSpec, out_dir: Path, reports_dir: Path,
             **hooks) -> Path:
    """Score the test split, check the saved thresholds on it, write the report (JSON, Markdown, figures)."""
    from . import report

    params = json.loads(Path(params_path).read_text())
    samples, split = load_samples(spec.task, "test", spec.n, spec.seed, spec.dataset, Path(reports_dir) / "data")
    ckpt = checkpoint_path(reports_dir, engine.lm.model_id, spec, "test")
    records = score_all(engine, samples, spec, ckpt, **hooks)
    metrics = stats.evaluate(*_arrays(records), params, seed=spec.seed, n_boot=spec.n_boot,
                             baselines=_baselines(records))
    stem = f"{Path(params_path).stem}_eval_{spec.task}_n{spec.n}"
    figures = report.write_figures(records, params, metrics, out_dir, stem)
    meta = {"model": engine.lm.model_id, "params": Path(params_path).name, "task": spec.task, "n": spec.n,
            "seed": spec.seed, "max_tokens": spec.max_tokens, "prompt_format": spec.prompt_format,
            "scores_file": str(ckpt), "created_utc": _utc_now().isoformat().replace("+00:00", "Z")}
    body = {**meta, "split": split, "metrics": metrics, "figures": [p.name for p in figures]}
    write_atomic(Path(out_dir) / f"{stem}.md", report.markdown(metrics, params, meta, [p.name for p in figures]))
    return write_json_atomic(Path(out_dir) / f"{stem}.json", body)
