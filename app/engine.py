"""The engine thread: the only thread that touches MLX.

The model is loaded on the engine thread and every generation runs there, one at a time.
Callers submit a `GenerationJob` with an `emit` callback; the engine calls it (from its own
thread) with one `StepRecord` per step, then a `Finished`, or an exception. `bridge` turns
that into an asyncio queue for HTTP handlers.
"""

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Callable

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import make_sampler

from adapters.generate import generate_batch, generate_steps, teacher_forced_steps
from adapters.loader import LoadedModel, load
from adapters.text import TextDeltas, verdict_token_ids
from signals.probe import Probe
from signals.step import STEP_FIELDS, VERDICT_FIELDS, probe_values, step_signals

log = logging.getLogger("halluwatch.engine")


class EngineBusy(RuntimeError):
    """The engine's queue is full."""


@dataclass(kw_only=True)
class Job:
    """What every engine job has: its place in the queue and how it reports back."""

    priority: int = 0  # lower runs first: interactive requests 0, calibration samples 1
    emit: Callable = print  # called on the engine thread with the job's results, or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class GenerationJob(Job):
    """Generate for one prompt; emits one StepRecord per step, then a Finished."""

    prompt_ids: list
    max_tokens: int
    top_logprobs: int = 0
    halt_cutoff: float | None = None  # stop when P_fail of a step exceeds it
    temperature: float = 0.0  # > 0 samples with mlx-lm's sampler (the signals stay at temperature 1)
    top_p: float = 1.0
    seed: int | None = None  # seeds MLX's random state for this job when sampling
    probe: Probe | None = None  # adds each step's probe outputs (StepRecord.probe_logit, probe_distance)
    capture_hidden: bool = False  # records carry their block outputs (probe fitting)


@dataclass
class BatchJob(Job):
    """Several prompts generated together (calibration); emits one list of (records, Finished)."""

    prompts: list
    max_tokens: int
    capture_hidden: bool = False  # records carry their block outputs (probe fitting)


@dataclass
class ScoreJob(Job):
    """Score a given response to a prompt (teacher forcing); emits (records, Finished)."""

    prompt_ids: list
    response_ids: list
    top_logprobs: int = 0
    probe: Probe | None = None


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
    probe_logit: float | None = None  # the job's probe applied to this step's block outputs
    probe_distance: float | None = None  # and how far they lie from its training states (Probe.distance)
    hidden: np.ndarray | None = None  # (L, D) block outputs, when captured

    def as_dict(self) -> dict:
        """The trace entry: every field but the internal ones."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _INTERNAL}


_INTERNAL = ("verdict", "probe_logit", "probe_distance", "hidden")


@dataclass
class Finished:
    finish_reason: str  # eos | length | pfail | cancelled
    prompt_tokens: int
    ttft_s: float | None
    tokens_per_s: float | None
    stop_token_id: int | None = None
    text_tail: str = ""  # an incomplete UTF-8 character held back at the end, if any


class Engine:
    """Owns the model on one thread and runs submitted generation jobs in order."""

    def __init__(self, model_ref: str = "default", *, precision: str = "auto", pfail_tau: float = 2.0,
                 pfail_lambda: float = 5.0, queue_depth: int = 16, prefill_step_size: int = 2048):
        self.model_ref = model_ref
        self.precision = precision
        self.pfail_tau = pfail_tau
        self.pfail_lambda = pfail_lambda
        self.prefill_step_size = prefill_step_size
        self._jobs: queue.PriorityQueue = queue.PriorityQueue(maxsize=queue_depth)
        self._order = itertools.count()  # FIFO within a priority
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="halluwatch-engine", daemon=True)
        self.lm: LoadedModel | None = None  # other threads may use its tokenizer and metadata only
        self._probe_arrays: tuple = (None, None)  # (probe, its weights as MLX arrays of this thread)
        self.busy = False  # a job is running

    def start(self) -> LoadedModel:
        """Start the thread and wait until the model is loaded; re-raise a load error."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.lm

    def stop(self) -> None:
        """Finish the job in progress, cancel the waiting ones, then end the thread."""
        if self._thread.is_alive():
            self._jobs.put((-1, next(self._order), None))
            self._thread.join()

    def submit(self, job: GenerationJob) -> None:
        """Queue a job; raise EngineBusy at once when the queue is full."""
        try:
            self._jobs.put_nowait((job.priority, next(self._order), job))
        except queue.Full:
            raise EngineBusy(f"engine queue is full ({self._jobs.maxsize} waiting)") from None

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize()

    def _run(self) -> None:
        try:
            self.lm = load(self.model_ref, self.precision)
            self._verdict = tuple(mx.array(ids) for ids in verdict_token_ids(self.lm.tokenizer))
        except BaseException as e:  # reported by start()
            self._error = e
            return
        finally:
            self._ready.set()
        log.info("loaded %s (%s, %d blocks, %s, BLAS %s)", self.lm.model_id, self.lm.family.name,
                 self.lm.n_layers, self.lm.dtype, self.lm.blas)
        while (job := self._jobs.get()[2]) is not None:
            if job.cancelled.is_set():
                job.emit(_cancelled(job))
                continue
            self.busy = True
            try:
                if isinstance(job, BatchJob):
                    self._generate_batch(job)
                elif isinstance(job, ScoreJob):
                    self._score(job)
                else:
                    self._generate(job)
            except Exception as e:
                log.exception("generation failed")
                job.emit(e)
            finally:
                self.busy = False
        while not self._jobs.empty():  # stopped: nobody will run what is still waiting
            if (job := self._jobs.get_nowait()[2]) is not None:
                job.emit(_cancelled(job))

    def _reducer(self, probe: Probe | None = None):
        """The per-step reduction: step_signals, then the probe's outputs when there is a probe."""
        if probe is not None and self._probe_arrays[0] is not probe:
            weights = (mx.array(probe.mean, dtype=mx.float32), mx.array(probe.scale, dtype=mx.float32),
                       mx.array(probe.coef, dtype=mx.float32), probe.intercept)
            self._probe_arrays = (probe, weights)

        def reduce(logits, hidden, token, prev_final):
            values = step_signals(logits, hidden, token, prev_final, self.pfail_tau, self.pfail_lambda,
                                  self._verdict)
            if probe is None:
                return values
            return mx.concatenate([values, probe_values(hidden[..., probe.layer, :], *self._probe_arrays[1])], axis=-1)

        return reduce

    def _top(self, top) -> list:
        decode = self.lm.tokenizer.decode
        return [{"token_id": t, "token": decode([t]), "logprob": lp} for t, lp in top]

    def _record(self, raw, text: str) -> StepRecord:
        n, m = len(STEP_FIELDS), len(STEP_FIELDS) + len(VERDICT_FIELDS)
        return StepRecord(raw.token, text, raw.logprob, self._top(raw.top), **dict(zip(STEP_FIELDS, raw.values)),
                          verdict=dict(zip(VERDICT_FIELDS, raw.values[n:m])),
                          probe_logit=raw.values[m] if len(raw.values) > m else None,
                          probe_distance=raw.values[m + 1] if len(raw.values) > m else None, hidden=raw.hidden)

    def _generate_batch(self, job: BatchJob) -> None:
        lm = self.lm
        results = []
        for ids, steps in zip(job.prompts, generate_batch(lm, job.prompts, job.max_tokens, self._reducer(),
                                                           prefill_step_size=self.prefill_step_size,
                                                           capture_hidden=job.capture_hidden)):
            deltas = TextDeltas(lm.tokenizer)
            stop_id = steps[-1].token if steps[-1].token in lm.stop_ids else None
            records = [self._record(raw, "" if raw.token == stop_id else deltas.add(raw.token)) for raw in steps]
            reason = "eos" if stop_id is not None else "length"
            results.append((records, Finished(reason, len(ids), None, None, stop_id, deltas.flush())))
        job.emit(results)

    def _score(self, job: ScoreJob) -> None:
        lm = self.lm
        steps = teacher_forced_steps(lm, job.prompt_ids, job.response_ids, self._reducer(job.probe),
                                     top_logprobs=job.top_logprobs, prefill_step_size=self.prefill_step_size)
        deltas = TextDeltas(lm.tokenizer)
        stop_id = steps[-1].token if steps[-1].token in lm.stop_ids else None
        records = [self._record(raw, "" if raw.token == stop_id else deltas.add(raw.token)) for raw in steps]
        reason = "eos" if stop_id is not None else "length"
        job.emit((records, Finished(reason, len(job.prompt_ids), None, None, stop_id, deltas.flush())))

    def _generate(self, job: GenerationJob) -> None:
        lm = self.lm
        deltas = TextDeltas(lm.tokenizer)
        sampler = None
        if job.temperature > 0:
            if job.seed is not None:
                mx.random.seed(job.seed)
            sampler = make_sampler(temp=job.temperature, top_p=job.top_p)
        steps = generate_steps(lm, job.prompt_ids, job.max_tokens, self._reducer(job.probe),
                               top_logprobs=job.top_logprobs,
                               prefill_step_size=self.prefill_step_size, sampler=sampler,
                               capture_hidden=job.capture_hidden)
        reason, stop_id, n, t_first, t_last = "length", None, 0, None, None
        try:
            for raw in steps:
                t_last = time.perf_counter()
                t_first = t_first or t_last
                values = dict(zip(STEP_FIELDS, raw.values))
                halted = job.halt_cutoff is not None and values["pfail"] > job.halt_cutoff
                is_stop = raw.token in lm.stop_ids
                text = "" if halted or is_stop else deltas.add(raw.token)
                n += 1
                job.emit(self._record(raw, text))
                if halted:
                    reason = "pfail"
                    break
                if is_stop:
                    reason, stop_id = "eos", raw.token
                    break
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
        finally:
            steps.close()
        rate = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else None
        ttft = t_first - job.submitted if t_first else None
        job.emit(Finished(reason, len(job.prompt_ids), ttft, rate, stop_id, deltas.flush()))


def _cancelled(job) -> Finished | list | tuple:
    if isinstance(job, BatchJob):
        return [([], Finished("cancelled", len(ids), None, None)) for ids in job.prompts]
    if isinstance(job, ScoreJob):
        return [], Finished("cancelled", len(job.prompt_ids), None, None)
    return Finished("cancelled", len(job.prompt_ids), None, None)


def run_once(engine: Engine, job: BatchJob | ScoreJob):
    """Submit a job that emits a single result (batch, score) and wait for it on this thread."""
    events: queue.Queue = queue.Queue()
    job.emit = events.put
    engine.submit(job)
    result = events.get()
    if isinstance(result, Exception):
        raise result
    return result


def run_blocking(engine: Engine, job: GenerationJob) -> tuple:
    """Submit `job` and wait for it on this (non-event-loop) thread: (records, Finished)."""
    events: queue.Queue = queue.Queue()
    job.emit = events.put
    engine.submit(job)
    records = []
    while not isinstance(item := events.get(), Finished):
        if not isinstance(item, StepRecord):
            raise item
        records.append(item)
    return records, item


def bridge(job: GenerationJob) -> asyncio.Queue:
    """Point `job.emit` at a new asyncio queue of the running loop and return the queue."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(item) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            job.cancelled.set()

    job.emit = emit
    return events
