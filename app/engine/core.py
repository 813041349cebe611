"""The engine thread: the only thread that touches MLX.

The model is loaded on the engine thread. Generation jobs run in one continuous batch: a job
waits in the queue until the batch has room (`max_batch_size`), is prefilled (at most one
prefill chunk's worth of tokens between two decode steps), joins the batch at the next step and
leaves it when it finishes or is cancelled. A ScoreJob runs between two steps. `submit(job)`
returns a `Handle`; the engine reports to it one `StepRecord` per step, then a `Finished`, or an
exception.
"""

import logging
import threading
import time
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream, wired_limit

from adapters.batching import DecodeBatch, Prefill, Row, Sampling
from adapters.decode import teacher_forced_steps, reductions_on_host
from adapters.loader import LoadedModel, load
from adapters.memory import release_memory
from adapters.text import TextDeltas, verdict_token_ids
from signals.step import STEP_FIELDS, VERDICT_FIELDS, finish, probe_values, step_reductions

from .admission import STOP, WaitQueue
from .handle import Handle
from .jobs import Finished, GenerationJob, Job, ScoreJob, StepRecord

log = logging.getLogger("halluwatch.engine")

PFAIL = STEP_FIELDS.index("pfail")
N_SIGNALS = len(STEP_FIELDS) + len(VERDICT_FIELDS)  # the values before the probes'
IDLE_RELEASE_S = 1.0  # idle this long, the engine returns freed memory to the system (adapters/memory.py)


@dataclass
class _Batch:
    """Generation jobs submitted together (calibration), each reporting to its own handle."""

    members: list  # [(GenerationJob, Handle)]


@dataclass
class _Member:
    """A generation job in the running batch (or being prefilled for it), and its progress."""

    job: GenerationJob
    handle: Handle
    deltas: TextDeltas
    prefill: Prefill | None  # until it joins the batch
    queue_s: float
    steps: int = 0
    t_first: float | None = None
    t_last: float | None = None
    cached_tokens: int = 0  # prompt tokens reused from the prompt cache


class Engine:
    """Owns the model on one thread; decodes up to `max_batch_size` interactive generation jobs at
    once, calibration jobs (priority 1) only in room they leave; `queue_depth` more wait."""

    def __init__(self, model_ref: str = "default", *, precision: str = "auto", pfail_tau: float = 2.0,
                 pfail_lambda: float = 5.0, queue_depth: int = 16, prefill_step_size: int = 2048,
                 max_batch_size: int = 32, prompt_cache_mb: float = 0):
        self.model_ref = model_ref
        self.precision = precision
        self.pfail_tau = pfail_tau
        self.pfail_lambda = pfail_lambda
        self.prefill_step_size = prefill_step_size
        self.max_batch_size = max_batch_size
        self.prompt_cache_mb = prompt_cache_mb
        self._waiting = WaitQueue(queue_depth)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="halluwatch-engine", daemon=True)
        self.lm: LoadedModel | None = None  # other threads may use its tokenizer and metadata only
        self._batch: DecodeBatch | None = None  # made with the model, on the engine thread
        self._probe_arrays: dict = {}  # id(probe) -> (probe, its weights as MLX arrays of this thread)
        self._members: list = []  # in the batch's row order
        self._prefills: list = []  # admitted, not yet in the batch
        self._scoring = False
        self._reduce = (None, None)  # (probe ids, reduce) of the running batch
        self._released = False  # freed memory returned to the system since the last work

    def start(self) -> LoadedModel:
        """Start the thread and wait until the model is loaded; re-raise a load error."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self.lm

    def stop(self) -> None:
        """Finish the jobs in progress, cancel the waiting ones, then end the thread."""
        if self._thread.is_alive():
            self._waiting.put(-1, STOP, always=True)
            self._thread.join()

    def submit(self, job: Job) -> Handle:
        """Queue a job and return its handle; raise EngineBusy at once when the queue is full."""
        handle = Handle(job)
        self._waiting.put(job.priority, (job, handle))
        return handle

    def submit_batch(self, jobs: list) -> list:
        """Queue generation jobs that join the batch together (one queue slot); one handle per job."""
        handles = [Handle(job) for job in jobs]
        self._waiting.put(min(j.priority for j in jobs), _Batch(list(zip(jobs, handles))))
        return handles

    @property
    def queue_depth(self) -> int:
        """Work waiting for room in the batch."""
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        """Generation jobs in the running batch or being prefilled for it."""
        return len(self._members) + len(self._prefills)

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes of the running batch's KV caches (0 while it is empty)."""
        return self._batch.kv_bytes if self._batch is not None else 0

    @property
    def prompt_cache_bytes(self) -> int:
        """Bytes of KV caches the prompt cache keeps now (0 without one)."""
        batch = self._batch
        return batch.reuse.nbytes if batch is not None and batch.reuse is not None else 0

    @property
    def busy(self) -> bool:
        """A job is running."""
        return self._scoring or self.batch_size > 0

    def _run(self) -> None:
        try:
            self.lm = load(self.model_ref, self.precision)
            verdict = verdict_token_ids(self.lm.tokenizer)
            self._verdict, self._verdict_host = tuple(mx.array(ids) for ids in verdict), tuple(map(np.array, verdict))
            self._batch = DecodeBatch(self.lm, self.prefill_step_size, int(self.prompt_cache_mb * 2**20))
        except BaseException as e:  # reported by start()
            self._error = e
            return
        finally:
            self._ready.set()
        log.info("loaded %s (%s, %d blocks, %s, BLAS %s)", self.lm.model_id, self.lm.family.name,
                 self.lm.n_layers, self.lm.dtype, self.lm.blas)
        try:
            with wired_limit(self.lm.model, [generation_stream]):
                self._serve()
        finally:
            mx.clear_streams()  # this thread's MLX streams; left to process exit they can abort it

    def _serve(self) -> None:
        """Admit, prefill and step until stopped; then cancel what still waits."""
        while not (self._waiting.stopping and not self.busy):
            if not self._waiting.stopping:
                self._admit()
            self._advance_prefills()
            if self._members:
                self._step()
        for work in self._waiting.drain():  # stopped: nobody will run what is still waiting
            for job, handle in _members(work):
                handle.emit(_cancelled(job))

    # -- admission ------------------------------------------------------------------------------

    def _fits(self, work) -> bool:
        """Room for `work`: interactive jobs up to `max_batch_size` of them, calibration jobs
        only while the whole batch is smaller."""
        everyone = [m.job for m in self._members + self._prefills]
        if min(job.priority for job, _ in _members(work)) <= 0:
            return sum(1 for job in everyone if job.priority <= 0) < self.max_batch_size
        return len(everyone) < self.max_batch_size

    def _admit(self) -> None:
        """Take what fits from the queue, waiting for work while there is nothing to do; once idle
        for IDLE_RELEASE_S, hand the memory the last work freed back to the system first."""
        while True:
            idle = not self.busy
            work = self._waiting.take(self._fits, wait=idle, timeout=None if self._released else IDLE_RELEASE_S)
            if work is None:
                if self._released or not idle or len(self._waiting):  # not idle, or released already
                    return
                release_memory()
                self._released = True
                continue
            self._released = False
            now = time.perf_counter()
            for job, handle in _members(work):
                if job.cancelled.is_set():
                    handle.emit(_cancelled(job))
                elif isinstance(job, ScoreJob):
                    self._score(job, handle)
                else:
                    self._join_later(job, handle, now - job.submitted)

    def _join_later(self, job: GenerationJob, handle: Handle, queue_s: float) -> None:
        """Queue a generation job's prefill."""
        sampling = Sampling(job.temperature, job.top_p, job.seed) if job.temperature > 0 else None
        # an interactive answer is kept in the prompt cache when it ends (the next turn starts with it)
        row = Row(None, job.top_logprobs, job.capture_hidden, sampling, job.max_tokens, keep=job.priority <= 0)
        try:
            prefill = self._batch.prefill(job.prompt_ids, row)
        except Exception as e:
            handle.emit(e)
            return
        row.owner = member = _Member(job, handle, TextDeltas(self.lm.tokenizer), prefill, queue_s)
        # interactive prompts are prefilled before calibration ones (the list stays in priority order)
        self._prefills.insert(sum(1 for m in self._prefills if m.job.priority <= job.priority), member)

    def _advance_prefills(self) -> None:
        """Prefill newcomers, interactive ones first, at most one prefill chunk's worth of tokens;
        join the finished ones."""
        budget, ready = self.prefill_step_size, []
        while self._prefills and budget > 0:
            member = self._prefills[0]
            try:
                if member.job.cancelled.is_set():
                    member.handle.emit(self._finished(member, "cancelled"))
                else:
                    budget -= member.prefill.advance(budget)
                    if not member.prefill.done:
                        break
                    ready.append(member)
            except Exception as e:
                log.exception("prefill failed")
                member.handle.emit(e)
            self._prefills.pop(0)
        if ready:
            self._join(ready)

    def _join(self, ready: list) -> None:
        """Prefilled members into the batch, at once."""
        try:
            self._batch.join([m.prefill for m in ready])
        except Exception as e:
            log.exception("joining the batch failed")
            for member in ready:
                member.handle.emit(e)
            return
        for member in ready:
            member.cached_tokens = member.prefill.reused
            member.prefill = None  # its cache is in the batch now
        self._members += ready

    # -- decoding -------------------------------------------------------------------------------

    def _step(self) -> None:
        """Start the running batch's next step and report the one before it (see DecodeBatch.step):
        a StepRecord to each member that took part in it; the finished ones leave."""
        try:
            reduce, columns = self._batch_reducer()  # columns: the tag its step is reported with
            steps, columns = self._batch.step(reduce, columns, self._host_reduce())
            self._finish([raw for _, raw in steps])
            done = [row for row, raw in steps if not self._report(row.owner, raw, columns.get(id(row.owner)))]
        except Exception as e:
            log.exception("generation failed")
            for member in self._members:
                member.handle.emit(e)
            done = self._batch.rows
        self._batch.leave(done)
        self._members = [row.owner for row in self._batch.rows]

    def _report(self, member: _Member, raw, columns: list | None) -> bool:
        """Emit a member's step (its probes' values at `columns` of the step's values, None: all
        of them, in order); False when it is done (and its Finished emitted)."""
        job = member.job
        member.t_last = time.perf_counter()
        member.t_first = member.t_first or member.t_last
        member.steps += 1
        if columns is not None:
            raw.values = raw.values[:N_SIGNALS] + [raw.values[c] for c in columns]
        halted = job.halt_cutoff is not None and raw.values[PFAIL] > job.halt_cutoff
        is_stop = raw.token in self.lm.stop_ids
        member.handle.emit(self._record(raw, "" if halted or is_stop else member.deltas.add(raw.token)))
        if halted:
            reason = "pfail"
        elif is_stop:
            reason = "eos"
        elif job.cancelled.is_set():
            reason = "cancelled"
        elif member.steps >= job.max_tokens:
            reason = "length"
        else:
            return True
        member.handle.emit(self._finished(member, reason, raw.token if is_stop else None))
        return False

    def _finished(self, member: _Member, reason: str, stop_id: int | None = None) -> Finished:
        t_first, t_last, n = member.t_first, member.t_last, member.steps
        rate = (n - 1) / (t_last - t_first) if n > 1 and t_last > t_first else None
        ttft = t_first - member.job.submitted if t_first else None
        return Finished(reason, len(member.job.prompt_ids), ttft, rate, stop_id, member.deltas.flush(),
                        member.queue_s, member.cached_tokens)

    def _batch_reducer(self) -> tuple:
        """(the reduction for the running batch: its members' probes, each once; where each
        member's probe values lie in its values, by id(member), None: all of them, in order)."""
        probes = {id(p): p for m in self._members for p in m.job.probes}
        key = tuple(probes)
        if self._reduce[0] != key:
            self._reduce = (key, self._reducer(tuple(probes.values())))
        at = {pid: N_SIGNALS + 2 * i for i, pid in enumerate(key)}
        columns = {}
        for m in self._members:
            ids = tuple(id(p) for p in m.job.probes)
            columns[id(m)] = None if ids == key else [at[i] + k for i in ids for k in (0, 1)]
        return self._reduce[1], columns

    def _weights(self, probes: tuple) -> list:
        """The probes' weights as MLX arrays of this thread, made once per probe (kept for the
        latest probes asked for: the served ones)."""
        cache = {}
        for probe in probes:
            cached = self._probe_arrays.get(id(probe))
            if cached is None or cached[0] is not probe:
                cached = (probe, (mx.array(probe.mean, dtype=mx.float32), mx.array(probe.scale, dtype=mx.float32),
                                  mx.array(probe.coef, dtype=mx.float32), probe.intercept))
            cache[id(probe)] = cached
        self._probe_arrays = cache
        return [(probe.layer, cache[id(probe)][1]) for probe in probes]

    def _host_reduce(self):
        """The step's reductions (over the vocabulary and the block outputs), in NumPy, where they
        are cheaper on the host (`reductions_on_host`): the step's log-softmax is then made there too;
        else None."""
        if not reductions_on_host():
            return None
        return lambda logprobs, token, hidden, prev: step_reductions(logprobs, hidden, token, prev, self._verdict_host)

    def _reducer(self, probes: tuple = ()):
        """The per-step reduction on the device: step_reductions, then each probe's (logit, distance);
        `_finish` makes the signals of it. Where the step's reductions are made on the host (no
        `logprobs`: `_host_reduce`), only the probes' values, put after them in `_finish`."""
        weights = self._weights(probes)

        def reduce(logprobs, hidden, token, prev_final):
            values = [probe_values(hidden[..., layer, :], *w) for layer, w in weights]
            if logprobs is not None:
                values.insert(0, step_reductions(logprobs, hidden, token, prev_final, self._verdict))
            return mx.concatenate(values, axis=-1) if values else mx.zeros((*hidden.shape[:-2], 0))

        return reduce

    def _finish(self, steps: list) -> None:
        """The signals of these steps' reductions, in place (one NumPy pass over all of them; the
        reductions a step made on the host first, then its probes' values from the device)."""
        if steps:
            values = np.array([raw.values for raw in steps])
            if steps[0].rows is not None:
                values = np.concatenate([np.stack([raw.rows for raw in steps]), values], axis=-1)
            values = finish(values, self.pfail_tau, self.pfail_lambda)
            for raw, v in zip(steps, values.tolist()):
                raw.values, raw.rows = v, None

    def _top(self, top) -> list:
        decode = self.lm.tokenizer.decode
        return [{"token_id": t, "token": decode([t]), "logprob": lp} for t, lp in top]

    def _record(self, raw, text: str) -> StepRecord:
        return StepRecord(raw.token, text, raw.logprob, self._top(raw.top) if raw.top else [],
                          **dict(zip(STEP_FIELDS, raw.values)),
                          verdict=dict(zip(VERDICT_FIELDS, raw.values[len(STEP_FIELDS):N_SIGNALS])),
                          probe_logits=tuple(raw.values[N_SIGNALS::2]),
                          probe_distances=tuple(raw.values[N_SIGNALS + 1::2]), hidden=raw.hidden)

    # -- scoring --------------------------------------------------------------------------------

    def _score(self, job: ScoreJob, handle: Handle) -> None:
        """Teacher-force a given response (between two steps of the batch)."""
        self._scoring = True
        try:
            steps = teacher_forced_steps(self.lm, job.prompt_ids, job.response_ids, self._reducer(job.probes),
                                         top_logprobs=job.top_logprobs, prefill_step_size=self.prefill_step_size,
                                         capture_hidden=job.capture_hidden, host_reduce=self._host_reduce())
        except Exception as e:
            log.exception("scoring failed")
            handle.emit(e)
            return
        finally:
            self._scoring = False
        self._finish(steps)
        deltas = TextDeltas(self.lm.tokenizer)
        stop_id = steps[-1].token if steps[-1].token in self.lm.stop_ids else None
        for raw in steps:
            handle.emit(self._record(raw, "" if raw.token == stop_id else deltas.add(raw.token)))
        reason = "eos" if stop_id is not None else "length"
        handle.emit(Finished(reason, len(job.prompt_ids), stop_token_id=stop_id, text_tail=deltas.flush()))


def _members(work) -> list:
    """[(job, handle)] of a queued unit."""
    return work.members if isinstance(work, _Batch) else [work]


def _cancelled(job: Job) -> Finished:
    return Finished("cancelled", len(getattr(job, "prompt_ids", [])))
