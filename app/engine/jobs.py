"""What the engine runs and what it reports: job kinds, per-step records, the final `Finished`."""

import threading
import time
from dataclasses import dataclass, field, fields

import numpy as np


class EngineBusy(RuntimeError):
    """The engine's queue is full."""


@dataclass(kw_only=True)
class Job:
    """What every engine job has: its place in the queue and its cancel flag."""

    priority: int = 0  # lower runs first: interactive requests 0, calibration samples 1
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class GenerationJob(Job):
    """Generate for one prompt, one StepRecord per step."""

    prompt_ids: list
    max_tokens: int
    top_logprobs: int = 0
    halt_cutoff: float | None = None  # stop when P_fail of a step exceeds it
    temperature: float = 0.0  # > 0 samples with mlx-lm's sampler (the signals stay at temperature 1)
    top_p: float = 1.0
    seed: int | None = None  # seeds MLX's random state for this job when sampling
    probes: tuple = ()  # Probes whose outputs each step adds (StepRecord.probe_logits, probe_distances)
    capture_hidden: bool = False  # records carry their block outputs (probe fitting)


@dataclass
class ScoreJob(Job):
    """Score a given response to a prompt (teacher forcing), one StepRecord per response token."""

    prompt_ids: list
    response_ids: list
    top_logprobs: int = 0
    probes: tuple = ()
    capture_hidden: bool = False  # records carry their block outputs (states of a scored answer)


@dataclass
class StepRecord:
    """One generated step: its token, text delta, logprobs and per-step signals."""

    token_id: int
    text: str
    logprob: float
    top_logprobs: list
    delta_mu: float
    delta_sigma: float
    hbar_s: float
    surprise: float
    delta_h: float
    pri: float
    pfail: float
    entropy: float
    prob: float
    # Kept for the response scores and calibration, not in the trace:
    verdict: dict | None = None  # p_yes / p_no at this step
    probe_logits: tuple = ()  # each of the job's probes applied to this step's block outputs
    probe_distances: tuple = ()  # and how far they lie from its training states (Probe.distance)
    hidden: np.ndarray | None = None  # (L, D) block outputs, when captured

    def as_dict(self) -> dict:
        """The trace entry: every field but the internal ones."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _INTERNAL}


_INTERNAL = ("verdict", "probe_logits", "probe_distances", "hidden")


@dataclass
class Finished:
    """The last thing every job reports."""

    finish_reason: str  # eos | length | pfail | cancelled
    prompt_tokens: int
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    stop_token_id: int | None = None
    text_tail: str = ""  # an incomplete UTF-8 character held back at the end, if any
    queue_s: float | None = None  # from submission until the job was taken into the running batch
    cached_tokens: int = 0  # prompt tokens not prefilled: their KV entries came from the prompt cache
