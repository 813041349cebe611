"""Calibration jobs: kept in SQLite, run one at a time on a worker thread.

The worker drives `runs.calibrate`, whose samples go to the engine at a lower priority
than interactive requests, so a running job delays a /generate by at most one sample. Jobs
survive a restart: one that was queued or running when the server stopped is marked
`interrupted`; its checkpointed scores are kept, and resuming it continues from them.
"""

import json
import sqlite3
import threading
import time
import uuid
from datetime import datetime, UTC
from pathlib import Path
from collections.abc import Callable

from ..engine import Cancelled, Engine
from . import runs
from .scoring import RunSpec
from .params import activate

ACTIVE = ("queued", "running")
COLUMNS = ("id", "status", "request", "done", "total", "eta_s", "result", "error", "created_utc", "updated_utc")


class JobConflict(RuntimeError):
    """Another job is queued or running."""


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class JobStore:
    """The jobs table; every call opens its own connection (callers are on several threads)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, request TEXT, "
                       "done INTEGER, total INTEGER, eta_s REAL, result TEXT, error TEXT, "
                       "created_utc TEXT, updated_utc TEXT)")

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def create(self, request: dict) -> str:
        job_id = uuid.uuid4().hex[:12]
        with self._db() as db:
            db.execute("INSERT INTO jobs VALUES (?, 'queued', ?, 0, NULL, NULL, NULL, NULL, ?, ?)",
                       (job_id, json.dumps(request), _now(), _now()))
        return job_id

    def update(self, job_id: str, **fields) -> None:
        for key in ("result", "request"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {sets}, updated_utc = ? WHERE id = ?", (*fields.values(), _now(), job_id))

    def get(self, job_id: str) -> dict | None:
        with self._db() as db:
            row = db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._public(row) if row else None

    def all(self) -> list:
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY created_utc, rowid").fetchall()
        return [self._public(r) for r in rows]

    def mark_interrupted(self) -> int:
        """At start: jobs left queued or running by a stopped server become `interrupted`."""
        with self._db() as db:
            return db.execute("UPDATE jobs SET status = 'interrupted', updated_utc = ? WHERE status IN "
                              "('queued', 'running')", (_now(),)).rowcount

    @staticmethod
    def _public(row) -> dict:
        r = dict(zip(COLUMNS, row))
        return {
            "id": r["id"], "status": r["status"], "request": json.loads(r["request"]),
            "progress": {"done": r["done"], "total": r["total"], "eta_s": r["eta_s"]},
            "result": json.loads(r["result"]) if r["result"] else None, "error": r["error"],
            "created_utc": r["created_utc"], "updated_utc": r["updated_utc"],
        }


class JobRunner:
    """Runs one calibration job at a time on its own thread."""

    def __init__(self, store: JobStore, engine: Engine, settings, on_activated: Callable[[], None]):
        self.store, self.engine, self.settings = store, engine, settings
        self.on_activated = on_activated
        self._lock = threading.Lock()
        self._cancel: dict = {}  # job id -> Event, for the job in hand
        self._stopping = False

    def start(self, request: dict, job_id: str | None = None) -> str:
        """Queue a new job (or resume `job_id`); raise JobConflict if one is active."""
        with self._lock:
            if self._stopping:
                raise JobConflict("the server is shutting down")
            if any(j["status"] in ACTIVE for j in self.store.all()):
                raise JobConflict("a calibration job is already queued or running")
            if job_id is None:
                job_id = self.store.create(request)
            else:
                self.store.update(job_id, status="queued", error=None, done=0, total=None, eta_s=None)
            self._cancel[job_id] = threading.Event()
        threading.Thread(target=self._run, args=(job_id, request), name=f"calibrate-{job_id}", daemon=True).start()
        return job_id

    def shutdown(self) -> None:
        """Server stopping: the job in hand stops after its current sample and is marked interrupted."""
        with self._lock:
            self._stopping = True
            for event in self._cancel.values():
                event.set()
            self.store.mark_interrupted()

    def cancel(self, job_id: str) -> None:
        """Ask the job to stop after the sample in progress (its checkpoint is kept)."""
        if (event := self._cancel.get(job_id)) is not None:
            event.set()

    def _run(self, job_id: str, request: dict) -> None:
        cancelled = self._cancel[job_id]
        started, first = time.monotonic(), None

        def progress(done: int, total: int) -> None:
            nonlocal first
            first = done if first is None else first
            rate = (done - first) / (time.monotonic() - started)
            eta = (total - done) / rate if rate > 0 else None
            self.store.update(job_id, done=done, total=total, eta_s=eta)

        spec = RunSpec(model_ref=self.engine.model_ref, task=request["task"], n=request["n"],
                       max_tokens=request["max_tokens"], seed=request["seed"],
                       dataset=request.get("dataset_path"), batch_size=request.get("batch_size", 1),
                       probes=request.get("probes", True), sources=tuple(request.get("source_paths") or ()),
                       shares=tuple(request.get("shares") or ()),
                       n_samples=request.get("samples", 5), temperature=request.get("temperature", 0.5),
                       top_p=request.get("top_p", 1.0))
        self.store.update(job_id, status="running")
        try:
            path = runs.calibrate(self.engine, spec, self.settings.calibrations_dir,
                                         self.settings.reports_dir, progress=progress, cancelled=cancelled)
            params = json.loads(path.read_text())
            result = {"params_path": str(path), "activated": bool(request.get("activate")),
                      **{k: params[k] for k in ("auroc_hbar", "auroc_pri", "auroc_joint", "tau_hbar", "tau_pri")},
                      "risk": params.get("risk"), "probe": params.get("probe")}
            if request.get("activate"):
                activate(self.settings.state_dir, path, f"calibration job {job_id}")
                self.on_activated()
            self.store.update(job_id, status="succeeded", result=result, eta_s=0)
        except Cancelled:
            self.store.update(job_id, status="interrupted" if self._stopping else "cancelled")
        except Exception as e:  # the job fails; served thresholds and params files are untouched
            self.store.update(job_id, status="failed", error=f"{type(e).__name__}: {e}")
        finally:
            self._cancel.pop(job_id, None)
