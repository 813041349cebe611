"""The engine thread: the only thread that touches MLX.

The model is loaded on the engine thread and every job runs there, one at a time (a batch of
calibration prompts counts as one). `submit(job)` returns a `Handle`; the engine reports to it
one `StepRecord` per step, then a `Finished`, or an exception.
"""

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.sample_utils import make_sampler

from adapters.decode import RowSampling, generate_batch, generate_steps, teacher_forced_steps
from adapters.loader import LoadedModel, load
from adapters.text import TextDeltas, verdict_token_ids
from signals.step import STEP_FIELDS, VERDICT_FIELDS, probe_values, step_signals

from .handle import Handle
from .jobs import EngineBusy, Finished, GenerationJob, Job, ScoreJob, StepRecord

log = logging.getLogger("halluwatch.engine")


@dataclass
class _Batch:
    """Generation jobs decoded together (calibration), each reporting to its own handle."""

    members: list  # [(GenerationJob, Handle)]


class Engine:
    """Owns the model on one thread and runs submitted jobs by priority, first come first served within one."""

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
        self._probe_arrays: dict = {}  # id(probe) -> (probe, its weights as MLX arrays of this thread)
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

    def submit(self, job: Job) -> Handle:
        """Queue a job and return its handle; raise EngineBusy at once when the queue is full."""
        handle = Handle(job)
        self._put(job.priority, (job, handle))
        return handle

    def submit_batch(self, jobs: list) -> list:
        """Queue generation jobs to be decoded together (one queue slot); one handle per job."""
        handles = [Handle(job) for job in jobs]
        self._put(min(j.priority for j in jobs), _Batch(list(zip(jobs, handles))))
        return handles

    def _put(self, priority: int, work) -> None:
        try:
            self._jobs.put_nowait((priority, next(self._order), work))
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
        try:
            while (work := self._jobs.get()[2]) is not None:
                self.busy = True
                try:
                    self._do(work)
                finally:
                    self.busy = False
            while not self._jobs.empty():  # stopped: nobody will run what is still waiting
                if (work := self._jobs.get_nowait()[2]) is not None:
                    for job, handle in _members(work):
                        handle.emit(_cancelled(job))
        finally:
            mx.clear_streams()  # this thread's MLX streams; left to process exit they can abort it

    def _do(self, work) -> None:
        """Run one queued unit; report a failure to every handle it concerns."""
        members = _members(work)
        live = [(job, handle) for job, handle in members if not job.cancelled.is_set()]
        for job, handle in members:
            if job.cancelled.is_set():
                handle.emit(_cancelled(job))
        if not live:
            return
        try:
            if isinstance(work, _Batch):
                self._generate_batch(live)
            elif isinstance(work[0], ScoreJob):
                self._score(*work)
            else:
                self._generate(*work)
        except Exception as e:
            log.exception("generation failed")
            for _, handle in live:
                handle.emit(e)

    def _weights(self, probes: tuple) -> list:
        """The probes' weights as MLX arrays of this thread, made once per probe (kept for the
        latest job's probes: the served ones)."""
        cache = {}
        for probe in probes:
            cached = self._probe_arrays.get(id(probe))
            if cached is None or cached[0] is not probe:
                cached = (probe, (mx.array(probe.mean, dtype=mx.float32), mx.array(probe.scale, dtype=mx.float32),
                                  mx.array(probe.coef, dtype=mx.float32), probe.intercept))
            cache[id(probe)] = cached
        self._probe_arrays = cache
        return [(probe.layer, cache[id(probe)][1]) for probe in probes]

    def _reducer(self, probes: tuple = ()):
        """The per-step reduction: step_signals, then each probe's (logit, distance)."""
        weights = self._weights(probes)

        def reduce(logits, hidden, token, prev_final):
            values = step_signals(logits, hidden, token, prev_final, self.pfail_tau, self.pfail_lambda,
                                  self._verdict)
            if not weights:
                return values
            outputs = [probe_values(hidden[..., layer, :], *w) for layer, w in weights]
            return mx.concatenate([values, *outputs], axis=-1)

        return reduce

    def _top(self, top) -> list:
        decode = self.lm.tokenizer.decode
        return [{"token_id": t, "token": decode([t]), "logprob": lp} for t, lp in top]

    def _record(self, raw, text: str) -> StepRecord:
        n, m = len(STEP_FIELDS), len(STEP_FIELDS) + len(VERDICT_FIELDS)
        return StepRecord(raw.token, text, raw.logprob, self._top(raw.top), **dict(zip(STEP_FIELDS, raw.values)),
                          verdict=dict(zip(VERDICT_FIELDS, raw.values[n:m])), probe_logits=tuple(raw.values[m::2]),
                          probe_distances=tuple(raw.values[m + 1::2]), hidden=raw.hidden)

    def _emit_all(self, handle: Handle, steps: list, prompt_tokens: int) -> None:
        """Report finished steps (a batch member, a scored response) and their Finished."""
        deltas = TextDeltas(self.lm.tokenizer)
        stop_id = steps[-1].token if steps[-1].token in self.lm.stop_ids else None
        for raw in steps:
            handle.emit(self._record(raw, "" if raw.token == stop_id else deltas.add(raw.token)))
        reason = "eos" if stop_id is not None else "length"
        handle.emit(Finished(reason, prompt_tokens, stop_token_id=stop_id, text_tail=deltas.flush()))

    def _generate_batch(self, members: list) -> None:
        jobs = [job for job, _ in members]
        prompts = [job.prompt_ids for job in jobs]
        batch = generate_batch(self.lm, prompts, max(j.max_tokens for j in jobs), self._reducer(),
                               prefill_step_size=self.prefill_step_size,
                               capture_hidden=any(j.capture_hidden for j in jobs), sampling=_row_sampling(jobs))
        for (job, handle), steps in zip(members, batch):
            self._emit_all(handle, steps[:job.max_tokens], len(job.prompt_ids))

    def _score(self, job: ScoreJob, handle: Handle) -> None:
        steps = teacher_forced_steps(self.lm, job.prompt_ids, job.response_ids, self._reducer(job.probes),
                                     top_logprobs=job.top_logprobs, prefill_step_size=self.prefill_step_size)
        self._emit_all(handle, steps, len(job.prompt_ids))

    def _generate(self, job: GenerationJob, handle: Handle) -> None:
        lm = self.lm
        deltas = TextDeltas(lm.tokenizer)
        sampler = None
        if job.temperature > 0:
            if job.seed is not None:
                mx.random.seed(job.seed)
            sampler = make_sampler(temp=job.temperature, top_p=job.top_p)
        steps = generate_steps(lm, job.prompt_ids, job.max_tokens, self._reducer(job.probes),
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
                handle.emit(self._record(raw, text))
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
        handle.emit(Finished(reason, len(job.prompt_ids), ttft, rate, stop_id, deltas.flush()))




def _row_sampling(jobs: list) -> list:
    """Each batch member's sampling: None (greedy) unless its job has a temperature, then its
    temperature, top_p and seed (0 when unset)."""
    return [RowSampling(j.temperature, j.top_p, j.seed or 0) if j.temperature > 0 else None for j in jobs]


def _members(work) -> list:
    """[(job, handle)] of a queued unit."""
    return work.members if isinstance(work, _Batch) else [work]


def _cancelled(job: Job) -> Finished:
    return Finished("cancelled", len(getattr(job, "prompt_ids", [])))
