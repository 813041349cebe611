"""Calibration jobs over HTTP: POST /calibrate, GET /calibrate[/{id}], DELETE /calibrate/{id}."""

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from ...calibration.background import JobConflict
from ...calibration.halueval import DatasetError
from ...calibration.questions import SOURCES
from ...calibration.scoring import RunSpec

router = APIRouter(prefix="/calibrate")
PACKAGED = "halueval"


class CalibrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: Literal["qa", "dialogue", "summarization", "answers", "consistency"] = Field(
        "qa", description="a HaluEval judgment task; 'answers': the model answers questions itself, labelled "
                          "by their gold answers; 'consistency': label-free, the model answers prompts, labelled by "
                          "whether `samples` sampled answers agree with its greedy one")
    n: int = Field(200, ge=10, description="samples to score (HaluEval: even, two per item)")
    sources: list[str] = Field(list(SOURCES), min_length=1,
                               description="task 'answers': shipped question sources, or question files (JSONL/CSV) "
                                           "inside the server's data folder; task 'consistency' also takes prompt "
                                           "files there (.txt one a line, or JSONL with 'prompt' or 'messages')")
    shares: list[int] | None = Field(None, description="each of `sources`' share of `n`, one positive integer per "
                                                       "source (default: an even spread)")
    max_tokens: int = Field(20, ge=1, le=512)
    seed: int = Field(42, ge=0)
    dataset: str = Field(PACKAGED, description="'halueval' (the packaged copy) or a file name inside the "
                                               "server's data folder")
    activate: bool = Field(False, description="serve the new thresholds as soon as the job succeeds")
    batch_size: int = Field(1, ge=1, le=32, description="samples per engine job: 1 keeps /generate waits to one "
                                                          "sample; more is faster but delays interactive requests")
    samples: int = Field(5, ge=1, le=20, description="task 'consistency': answers sampled per prompt beside the "
                                                     "greedy one (in the same engine batch)")
    temperature: float = Field(0.5, gt=0, le=2, description="task 'consistency': the samples' temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="task 'consistency': the samples' nucleus")
    probes: bool = Field(True, description="capture block outputs and fit linear probes (about 140 KB of disk "
                                           "per sample for a 135M model, under reports/scores)")


def _dataset_path(data_dir: Path, name: str, field: str = "dataset") -> str | None:
    """The data file, which must resolve inside `data_dir` (no `..`, absolute paths or symlink escapes)."""
    if name == PACKAGED and field == "dataset":
        return None
    root = Path(data_dir).resolve()
    try:
        path = (root / name).resolve()
        inside = path.is_relative_to(root) and path.is_file()
    except (OSError, ValueError):  # e.g. an embedded NUL byte, a name too long for the file system
        inside = False
    if not inside:
        raise HTTPException(400, f"{field}: {name!r} is not a file inside the server's data folder")
    return str(path)


@router.post("", status_code=202, responses={400: {"description": "dataset outside the data folder"},
                                             409: {"description": "a job is active"}})
async def start(req: CalibrateRequest, request: Request) -> dict:
    """Validate the request and its data, then queue the job: 202 {job_id}; 409 if one is active."""
    state = request.app.state
    body = req.model_dump()
    body["dataset_path"] = _dataset_path(state.settings.data_dir, req.dataset)
    body["source_paths"] = [s if s in SOURCES else _dataset_path(state.settings.data_dir, s, "sources")
                            for s in req.sources]
    spec = RunSpec("", task=req.task, n=req.n, seed=req.seed, dataset=body["dataset_path"],
                   sources=tuple(body["source_paths"]), shares=tuple(req.shares or ()))
    try:
        spec.samples("train", state.settings.reports_dir / "data")
    except DatasetError as e:
        raise HTTPException(422, detail=[{"loc": ["body", e.field], "msg": str(e), "type": "value_error"}]) from None
    try:
        return {"job_id": state.jobs.start(body)}
    except JobConflict as e:
        raise HTTPException(409, str(e)) from None


@router.get("")
async def list_jobs(request: Request) -> list:
    """All jobs, oldest first."""
    return request.app.state.jobs.store.all()


def _job(request: Request, job_id: str) -> dict:
    job = request.app.state.jobs.store.get(job_id)
    if job is None:
        raise HTTPException(404, f"no calibration job {job_id!r}")
    return job


@router.get("/{job_id}", responses={404: {"description": "no such job"}})
async def get_job(job_id: str, request: Request) -> dict:
    """Status, progress {done, total, eta_s}, result (metrics and params path) and error of a job."""
    return _job(request, job_id)


@router.delete("/{job_id}", responses={404: {"description": "no such job"}, 409: {"description": "not active"}})
async def cancel_job(job_id: str, request: Request) -> dict:
    """Cancel a queued or running job (a running one stops after its current sample)."""
    job = _job(request, job_id)
    if job["status"] not in ("queued", "running"):
        raise HTTPException(409, f"job {job_id} is {job['status']}, not queued or running")
    request.app.state.jobs.cancel(job_id)
    return {"job_id": job_id, "status": "cancelling"}


@router.post("/{job_id}/resume", status_code=202,
             responses={404: {"description": "no such job"}, 409: {"description": "not resumable"}})
async def resume_job(job_id: str, request: Request) -> dict:
    """Run an interrupted, failed or cancelled job again; scores already checkpointed are reused."""
    job = _job(request, job_id)
    if job["status"] not in ("interrupted", "failed", "cancelled"):
        raise HTTPException(409, f"job {job_id} is {job['status']}; only interrupted, failed or cancelled "
                                 "jobs can be resumed")
    try:
        return {"job_id": request.app.state.jobs.start(job["request"], job_id)}
    except JobConflict as e:
        raise HTTPException(409, str(e)) from None
