"""Scoring samples for calibration: each sample through the engine (greedy, batched at low
priority), its record appended to a JSONL checkpoint and fsynced, its block outputs saved beside
it. An interrupted run loses nothing and a re-run resumes where it stopped; checkpoints are keyed
by the model's fingerprint, so no other model's run ever reads them. Block outputs missing beside
a record, or saved in an older layout, are computed again from the recorded answer (teacher
forcing: the states generation computed, in one forward pass)."""

import hashlib
import io
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np

from signals.probe import STATE_ROWS
from signals.response import response_scores

from ..engine import Cancelled, Engine, GenerationJob, ScoreJob
from ..prompts import encode_prompt
from ..storage import write_bytes_atomic
from .deployment import load_prompts
from .halueval import load_samples
from .questions import load_questions


PROMPT_FORMATS = ("raw", "chat")
ANSWERS = "answers"  # the task of own-answer runs: the model answers questions, labelled by their gold answers
CONSISTENCY = "consistency"  # label-free runs: the model answers prompts, labelled by its own samples' agreement


@dataclass
class RunSpec:
    """What to score: model, task, split, size and protocol options."""

    model_ref: str
    task: str = "qa"
    n: int = 200
    max_tokens: int = 20
    seed: int = 42
    prompt_format: str = "raw"
    dataset: str | None = None  # a HaluEval file (default: the packaged copy)
    sources: tuple = ()  # task "answers": question sources (questions.SOURCES or question files)
    shares: tuple = ()  # ... and each one's share of n (default: even)
    n_boot: int = 1000
    batch_size: int = 1  # >1 scores that many samples per engine job (batched decode; higher throughput)
    probes: bool = True  # capture block outputs (prompt end, last step, answer mean); fit probes on them
    n_samples: int = 5  # task "consistency": sampled answers per prompt beside the greedy one
    temperature: float = 0.5  # ... their temperature (at 1.0 a 135M model hardly ever repeats itself)
    top_p: float = 1.0  # ... and nucleus

    def __post_init__(self):
        if self.task in (ANSWERS, CONSISTENCY):
            self.prompt_format = "chat"  # the model answers questions as a chat

    @property
    def label(self) -> str:
        """The task in file names: for own answers with their sources ("answers-nq_open")."""
        if self.task not in (ANSWERS, CONSISTENCY):
            return self.task
        return "-".join([self.task, *(Path(s).stem if Path(s).suffix else s for s in self.sources)])

    def samples(self, split: str, cache_dir: Path) -> tuple:
        """This run's samples of `split` and the split's description: HaluEval judgment prompts
        (task qa, dialogue or summarization) or questions the model answers (task "answers")."""
        if self.task == ANSWERS:
            return load_questions(list(self.sources), split, self.n, self.seed, self.dataset, shares=self.shares)
        if self.task == CONSISTENCY:
            return load_prompts(list(self.sources), split, self.n, self.seed, self.dataset, self.shares)
        return load_samples(self.task, split, self.n, self.seed, self.dataset, cache_dir)


def slug(text: str) -> str:
    """A file-name-safe form of a model id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.rsplit("/", 1)[-1]).strip("-").lower() or "model"


def checkpoint_path(reports_dir: Path, lm, spec: RunSpec, split: str) -> Path:
    """Where the scores of this model/task/split/protocol go; the same run of the same model (by
    fingerprint, not by name) always finds it again, and no other model's run ever does."""
    sampled = f"_k{spec.n_samples}_t{spec.temperature:g}_p{spec.top_p:g}" if spec.task == CONSISTENCY else ""
    name = (f"{slug(lm.model_id)}-{lm.fingerprint.id}_{spec.task}_{split}_seed{spec.seed}_mt{spec.max_tokens}_"
            f"{spec.prompt_format}{sampled}.jsonl")
    return Path(reports_dir) / "scores" / name


def states_dir(checkpoint: Path) -> Path:
    """Where the block outputs of a checkpoint's samples go: one .npy per sample, (4, L, D) float32
    holding the last-position output of every block at step 0 (prompt end), at the last step, and
    its mean and the mean of its square over all steps (STATE_ROWS)."""
    return Path(checkpoint).with_name(Path(checkpoint).stem + "_states")


def _states_path(checkpoint: Path, key: str) -> Path:
    return states_dir(checkpoint) / (key.replace(":", "_") + ".npy")


def load_states(checkpoint: Path, records: list) -> np.ndarray:
    """The saved block outputs of these records, shape (n, 4, L, D) (rows as in STATE_ROWS)."""
    return np.stack([np.load(_states_path(checkpoint, r["key"])) for r in records])


def _states_saved(checkpoint: Path, key: str) -> bool:
    """Whether a sample's block outputs are saved, in the current layout."""
    try:
        return np.load(_states_path(checkpoint, key), mmap_mode="r").shape[0] == len(STATE_ROWS)
    except (OSError, ValueError):
        return False


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


def encode(engine: Engine, sample, spec: RunSpec) -> list:
    """A sample's prompt ids: its prompt, or its chat messages, in the run's prompt format."""
    messages = list(sample.messages) if getattr(sample, "messages", None) else None
    return encode_prompt(engine.lm, sample.prompt, messages, spec.prompt_format == "chat", spec.max_tokens)


def _score_record(sample, records: list, fin) -> dict:
    text = "".join(r.text for r in records) + fin.text_tail
    return {
        "key": sample.key, "task": sample.task, "item": sample.item, "label": sample.label_for(text),
        **response_scores(records).as_dict(),
        "tokens": len(records), "finish_reason": fin.finish_reason, "text": text,
        "token_ids": [r.token_id for r in records],
        "verdict": records[0].verdict,  # step-0 mass on "Yes"/"No": the model's own judgment
        "steps": {"hbar_s": [r.hbar_s for r in records], "pri": [r.pri for r in records]},
    }


def score_batch(engine: Engine, samples: list, spec: RunSpec) -> list:
    """Score records (response scores + per-step trajectories) of these samples.

    One sample goes through the same pipelined path as /generate; several go as one batch job.
    """
    jobs = [GenerationJob(encode(engine, s, spec), spec.max_tokens, priority=1, capture_hidden=spec.probes)
            for s in samples]
    handles = [engine.submit(jobs[0])] if len(jobs) == 1 else engine.submit_batch(jobs)
    results = [h.wait() for h in handles]  # Cancelled if the engine stopped
    return [(_score_record(s, records, fin), _states(records) if spec.probes else None)
            for s, (records, fin) in zip(samples, results)]


def _states(records: list) -> np.ndarray:
    """A response's saved block outputs (STATE_ROWS) from its step records' captured ones."""
    hidden = np.stack([r.hidden for r in records]).astype(np.float64)  # (steps, L, D)
    return np.stack([hidden[0], hidden[-1], hidden.mean(axis=0), np.mean(hidden ** 2, axis=0)]).astype(np.float32)


def restate_batch(engine: Engine, samples: list, records: list, spec: RunSpec) -> list:
    """The block outputs of recorded answers, computed again by teacher forcing each one."""
    handles = [engine.submit(ScoreJob(encode(engine, s, spec), r["token_ids"], priority=1, capture_hidden=True))
               for s, r in zip(samples, records)]
    return [_states(h.wait()[0]) for h in handles]  # Cancelled if the engine stopped


def sample_digest(sample) -> str:
    """A digest of everything a sample is (its prompt, context, gold answers): a checkpoint record
    made for another sample under the same key (an edited question file) is not reused."""
    return hashlib.sha256(repr(sample).encode()).hexdigest()[:16]


def score_all(engine: Engine, samples: list, spec: RunSpec, checkpoint: Path,
              progress: Callable[[int, int], None] = lambda done, total: None,
              cancelled: threading.Event | None = None) -> list:
    """Score every sample not yet in `checkpoint`, `spec.batch_size` at a time, appending each record.

    With `spec.probes`, each sample's block outputs are saved (see `states_dir`) before its record;
    a recorded sample whose outputs are missing or in an older layout gets them again by teacher
    forcing (`restate_batch`). A sample whose record was made for a different sample under its key
    (`sample_digest`; records written before digests are trusted) is scored again.
    """
    score = score_batch
    if spec.task == CONSISTENCY:  # each record also holds the prompt's sampled answers
        from .labelfree import score_batch as score
    done = read_checkpoint(checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    digests = {s.key: sample_digest(s) for s in samples}
    todo = [s for s in samples if s.key not in done or done[s.key].get("sample", digests[s.key]) != digests[s.key]]
    again = {s.key for s in todo}
    restate = [s for s in samples if s.key not in again and spec.probes and not _states_saved(checkpoint, s.key)]
    total, finished = len(samples) + len(restate), len(samples) - len(todo)
    progress(finished, total)

    def batches(items: list):
        for start in range(0, len(items), spec.batch_size):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled(f"cancelled after {finished} of {total} samples")
            yield items[start:start + spec.batch_size]

    for batch in batches(restate):
        for s, states in zip(batch, restate_batch(engine, batch, [done[s.key] for s in batch], spec)):
            _save_states(checkpoint, s.key, states)
        finished += len(batch)
        progress(finished, total)
    with open(checkpoint, "a") as f:
        for batch in batches(todo):
            for rec, states in score(engine, batch, spec):
                if states is not None:
                    _save_states(checkpoint, rec["key"], states)
                rec["sample"] = digests[rec["key"]]
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[rec["key"]] = rec
            f.flush()
            os.fsync(f.fileno())
            finished += len(batch)
            progress(finished, total)
    return [done[s.key] for s in samples]


def _save_states(checkpoint: Path, key: str, states: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, states)
    write_bytes_atomic(_states_path(checkpoint, key), buf.getvalue())
