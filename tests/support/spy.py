"""Watch what the engine reports to every job, in the order it happens, without timing anything.

`EngineSpy.install(monkeypatch)` replaces the `Handle` class the engine builds in `submit` and
`submit_batch`, so every handle made from then on (by a route, by calibration, by a test) logs
each StepRecord and the Finished the engine emits to it, and each `cancel()`. Everything goes into
one log with a global sequence number, together with the marks a test adds (`mark("closing")`),
so a test can ask "how many steps did this job run after the client hung up / after it was
cancelled" and "which job started first" as facts, not as durations.
"""

import itertools
import json
import socket
import threading
from dataclasses import dataclass, field

from app.engine import Finished, StepRecord, core
from app.engine.handle import Handle


@dataclass
class Tracked:
    """One job as the engine saw it."""

    job: object = field(repr=False)
    handle: Handle = field(repr=False)
    submitted: int  # sequence number of the submit
    steps: list = field(default_factory=list)  # sequence numbers of its StepRecords
    finished: Finished | BaseException | None = None
    finished_seq: int | None = None
    cancel_seq: int | None = None  # sequence number of the first cancel(), taken after the flag was set
    first_step: threading.Event = field(default_factory=threading.Event, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def started(self) -> int | None:
        """Sequence number of its first StepRecord (when the engine began running it)."""
        return self.steps[0] if self.steps else None

    def steps_after(self, seq: int) -> int:
        return sum(s > seq for s in self.steps)

    def wait_done(self, timeout: float = 120) -> Finished:
        assert self.done.wait(timeout), f"the engine did not finish {self.job!r} within {timeout} s"
        return self.finished


class EngineSpy:
    def __init__(self):
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self.tracked: list[Tracked] = []
        self.marks: dict = {}
        self.submitted = threading.Condition(self._lock)
        self._holds: dict = {}  # id(job) -> (entered, release)

    def install(self, monkeypatch) -> "EngineSpy":
        spy = self

        class SpyHandle(Handle):
            def __init__(self, job):
                super().__init__(job)
                spy._add(self)

            def emit(self, item):
                spy._emitted(self, item)
                if (hold := spy._holds.pop(id(self.job), None)) is not None:
                    entered, release = hold
                    entered.set()
                    assert release.wait(120), "a held job was never released"
                super().emit(item)

            def cancel(self):
                super().cancel()  # the flag first: steps counted after this are surely after it
                spy._cancelled(self)

        monkeypatch.setattr(core, "Handle", SpyHandle)
        return self

    def hold(self, job) -> tuple:
        """Make the engine thread wait inside `job`'s first report until released, so the jobs
        submitted meanwhile queue up: (entered, release) events. Call before submitting `job`."""
        entered, release = threading.Event(), threading.Event()
        self._holds[id(job)] = (entered, release)
        return entered, release

    def mark(self, name: str) -> int:
        """Put a named point (e.g. the moment a client hangs up) into the log; its sequence number."""
        with self._lock:
            self.marks[name] = seq = next(self._seq)
        return seq

    def of(self, handle: Handle) -> Tracked:
        with self._lock:
            return next(t for t in self.tracked if t.handle is handle)

    def of_job(self, job) -> Tracked:
        with self._lock:
            return next(t for t in self.tracked if t.job is job)

    def only(self) -> Tracked:
        with self._lock:
            assert len(self.tracked) == 1, f"expected one job, the engine got {len(self.tracked)}"
            return self.tracked[0]

    def wait_for_jobs(self, n: int, timeout: float = 120, where=lambda t: True) -> list:
        """Wait until at least `n` matching jobs were submitted; return them."""
        with self.submitted:
            ok = self.submitted.wait_for(lambda: len([t for t in self.tracked if where(t)]) >= n, timeout)
            found = [t for t in self.tracked if where(t)]
        assert ok, f"only {len(found)} of {n} jobs were submitted within {timeout} s"
        return found

    def _add(self, handle: Handle) -> None:
        with self._lock:
            self.tracked.append(Tracked(handle.job, handle, next(self._seq)))
            self.submitted.notify_all()

    def _find(self, handle: Handle) -> Tracked:
        return next(t for t in self.tracked if t.handle is handle)

    def _emitted(self, handle: Handle, item) -> None:
        with self._lock:
            t = self._find(handle)
            seq = next(self._seq)
            if isinstance(item, StepRecord):
                t.steps.append(seq)
            else:
                t.finished, t.finished_seq = item, seq
        if isinstance(item, StepRecord):
            t.first_step.set()
        else:
            t.done.set()

    def _cancelled(self, handle: Handle) -> None:
        with self._lock:
            t = self._find(handle)
            if t.cancel_seq is None:
                t.cancel_seq = next(self._seq)


def hang_up_mid_json_request(url: str, path: str, body: dict, spy: EngineSpy) -> None:
    """Send a JSON request on a raw socket, wait until its job's first step reached the handle, hang up."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        (job,) = spy.wait_for_jobs(1)
        assert job.first_step.wait(60), "the job never started"
        spy.mark("closing")  # before the close: the server cannot see the disconnect earlier than this


def check_cancelled_by_the_disconnect(job, spy: EngineSpy, max_tokens: int) -> None:
    """The job finished `cancelled` because the client went away, within one step of the cancel.

    The engine checks `job.cancelled` after each step it emits, so once the flag is set it emits
    at most the step in progress (the spy's cancel_seq is taken after the flag is set). How many
    steps run between the hang-up and the cancel depends on how soon the server notices the
    disconnect (machine load), so that part is only bounded by the job not running to the end."""
    fin = job.wait_done()
    assert isinstance(fin, Finished) and fin.finish_reason == "cancelled", fin
    closing = spy.marks["closing"]
    assert job.cancel_seq is not None and job.cancel_seq > closing, "cancelled before the client hung up"
    assert job.steps_after(job.cancel_seq) <= 1, (
        f"{job.steps_after(job.cancel_seq)} steps ran after the cancel (the engine stops within one)")
    assert job.started < closing and len(job.steps) < max_tokens, (
        f"{len(job.steps)} steps, {job.steps_after(closing)} of them after the disconnect")
    assert job.finished_seq > job.cancel_seq
