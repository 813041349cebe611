"""POST/GET/DELETE /calibrate with a tiny model: lifecycle, failures, cancel, 409, restart, hot switch."""

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support.live_server import live_server
from support.params import write_params
from support.spy import EngineSpy

from app.calibration.background import JobStore
from app.engine import GenerationJob
from app.http.app import create_app
from app.settings import Settings

N_ITEMS = 40


def _qa_items(n: int, long: bool = False) -> str:
    filler = " The river flows north through the old city." * (200 if long else 1)
    return "\n".join(json.dumps({
        "knowledge": f"Fact {i}: the capital of land {i} is city {i}.{filler}",
        "question": f"What is the capital of land {i}?",
        "right_answer": f"city {i}",
        "hallucinated_answer": f"city {i + 1}",
    }) for i in range(n)) + "\n"


@pytest.fixture
def settings(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.jsonl").write_text(_qa_items(N_ITEMS))
    (data / "long.jsonl").write_text(_qa_items(N_ITEMS, long=True))
    (data / "bad.jsonl").write_text(_qa_items(3) + "{not json\n")
    (tmp_path / "outside.jsonl").write_text(_qa_items(N_ITEMS))
    return Settings(home=tmp_path, params_dir=tmp_path / "params")


@pytest.fixture
def client(engine, settings):
    with TestClient(create_app(settings, engine)) as c:
        yield c


def _wait(client, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=120):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/calibrate/{job_id}").json()
        seen.append((job["status"], job["progress"]["done"]))
        if job["status"] in statuses:
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {seen[-3:]}")


def _hold_calibration(monkeypatch, engine) -> tuple:
    """Calibration samples (priority 1) wait before reaching the engine until `release` is set,
    so a job stays `running` for as long as a test needs: (arrived, release) events."""
    arrived, release = threading.Event(), threading.Event()
    submit = engine.submit

    def held(job):
        if job.priority == 1:
            arrived.set()
            assert release.wait(120), "the held calibration sample was never released"
        return submit(job)

    monkeypatch.setattr(engine, "submit", held)
    return arrived, release


@pytest.mark.slow
def test_lifecycle_and_hot_switch(client, settings, engine, monkeypatch):
    assert client.get("/model").json()["params"] is None
    arrived, release = _hold_calibration(monkeypatch, engine)
    r = client.post("/calibrate", json={"task": "qa", "n": 20, "max_tokens": 3, "dataset": "qa.jsonl",
                                        "activate": True})
    assert r.status_code == 202, r.text
    assert arrived.wait(120), "the job never submitted a sample"
    running = client.get(f"/calibrate/{r.json()['job_id']}").json()  # held at its first sample
    assert running["status"] == "running" and running["progress"] == {"done": 0, "total": 20, "eta_s": None}
    release.set()
    job, seen = _wait(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    done = [d for s, d in seen if s == "running"]
    assert done == sorted(done) and job["progress"] == {"done": 20, "total": 20, "eta_s": 0.0}
    result = job["result"]
    params_path = result["params_path"]
    saved = json.loads(Path(params_path).read_text())
    assert saved["tau_hbar"] == result["tau_hbar"] and saved["n"] == 20
    assert result["risk"] == saved["risk"] and result["probe"] == saved["probe"] is not None
    assert client.get("/model").json()["params"]["path"] == params_path
    body = client.post("/generate", json={"prompt": "hello", "max_tokens": 2}).json()
    q = body["quadrant"]
    assert q["params"] == params_path.rsplit("/", 1)[1] and q["tau_pri"] == result["tau_pri"]
    assert body["scores"]["probe_risk"] is not None and body["risk"]["detector"] == saved["risk"]["detector"]
    assert [j["id"] for j in client.get("/calibrate").json()] == [job["id"]]


@pytest.mark.parametrize("body,status,field", [
    ({"dataset": "../outside.jsonl"}, 400, "data folder"),
    ({"dataset": "/etc/passwd"}, 400, "data folder"),
    ({"dataset": "bad.jsonl", "n": 10}, 422, "line 4"),
    ({"dataset": "qa.jsonl", "n": 2 * N_ITEMS}, 422, "n"),
    ({"dataset": "qa.jsonl", "n": 11}, 422, "even"),
    ({"task": "math"}, 422, "task"),
    ({"n": 4}, 422, "n"),
])
def test_bad_requests_fail_before_scoring(client, body, status, field):
    r = client.post("/calibrate", json={"n": 10, "max_tokens": 2, **body})
    assert r.status_code == status, r.text
    assert field in r.text
    assert client.get("/calibrate").json() == []


def _fail_writing_params(monkeypatch, settings):
    """Writing into the calibrations folder fails (a full disk) once the probes are saved."""
    from app.calibration import runs

    write = runs.write_json_atomic

    def full_disk(path, data):
        if Path(path).parent == settings.calibrations_dir:
            raise OSError(28, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(runs, "write_json_atomic", full_disk)


@pytest.mark.parametrize("failure", ["scoring", pytest.param("writing", marks=pytest.mark.slow)])
def test_failure_later_leaves_params_untouched(engine, settings, monkeypatch, failure):
    """A job that fails after it started (activate requested): while scoring (a prompt beyond the
    context), or when writing its params file after the probes were fitted and saved. The params
    being served stay in effect and on disk byte for byte, nothing new is left among the
    calibrations, and no calibration is activated."""
    served = write_params(settings.params_dir / "served.json", engine.lm)
    before = served.read_bytes()
    if failure == "writing":
        _fail_writing_params(monkeypatch, settings)
        request, error = {"n": 20, "max_tokens": 2, "dataset": "qa.jsonl"}, "No space left"
    else:
        request, error = {"n": 10, "max_tokens": 2, "dataset": "long.jsonl"}, "context"
    with TestClient(create_app(settings, engine)) as client:
        model = client.get("/model").json()
        assert model["params"]["path"] == str(served) and model["params_source"] == "shipped"
        r = client.post("/calibrate", json={**request, "activate": True})
        assert r.status_code == 202, r.text
        job, _ = _wait(client, r.json()["job_id"])
        assert job["status"] == "failed" and error in job["error"] and job["result"] is None, job
        assert client.get("/model").json() == model
        body = client.post("/generate", json={"prompt": "hello", "max_tokens": 2}).json()
        assert body["quadrant"]["params"] == "served.json"
    assert served.read_bytes() == before and list(settings.params_dir.iterdir()) == [served]
    assert not settings.calibrations_dir.exists() or list(settings.calibrations_dir.iterdir()) == []
    assert not (settings.state_dir / "active_calibrations.json").exists()


def test_cancel_and_conflict(client, engine, monkeypatch):
    arrived, release = _hold_calibration(monkeypatch, engine)
    r = client.post("/calibrate", json={"n": 2 * (N_ITEMS // 2), "max_tokens": 6, "dataset": "qa.jsonl"})
    job_id = r.json()["job_id"]
    assert arrived.wait(120), "the job never submitted a sample"
    assert client.get(f"/calibrate/{job_id}").json()["status"] == "running"
    second = client.post("/calibrate", json={"n": 10, "max_tokens": 2, "dataset": "qa.jsonl"})
    assert second.status_code == 409
    assert client.post("/generate", json={"prompt": "hello there", "max_tokens": 4}).status_code == 200
    assert client.delete(f"/calibrate/{job_id}").status_code == 200
    release.set()  # the sample in hand is scored, then the job stops
    job, _ = _wait(client, job_id)
    # the sample in hand when the cancel came is the only one scored
    assert job["status"] == "cancelled" and (job["progress"]["done"], job["progress"]["total"]) == (1, N_ITEMS)
    assert client.delete(f"/calibrate/{job_id}").status_code == 409
    assert client.get("/calibrate/nope").status_code == 404


def test_interactive_request_goes_ahead_of_queued_calibration_samples(engine, settings, monkeypatch):
    """With a calibration job running (batch_size 1), a /generate submitted after the job's next
    sample was queued still runs before it: the engine's queue is by priority, not arrival."""
    spy = EngineSpy().install(monkeypatch)
    app = create_app(settings, engine)
    with live_server(app) as url:
        gate = GenerationJob(engine.lm.tokenizer.encode("hold the engine"), 2)
        entered, release = spy.hold(gate)
        engine.submit(gate)
        assert entered.wait(60), "the gate job never started"  # the engine thread now waits in it
        r = httpx.post(f"{url}/calibrate", json={"n": 10, "max_tokens": 2, "dataset": "qa.jsonl", "batch_size": 1})
        assert r.status_code == 202, r.text
        (sample,) = spy.wait_for_jobs(1, where=lambda t: t.job.priority == 1)
        _until(lambda: engine.queue_depth == 1)  # the sample is queued (and cannot leave while the gate holds)
        answer = {}
        request = threading.Thread(target=lambda: answer.update(r=httpx.post(
            f"{url}/generate", json={"prompt": "hello there", "max_tokens": 3}, timeout=120)))
        request.start()
        (interactive,) = spy.wait_for_jobs(1, where=lambda t: t.job.priority == 0 and t.job is not gate)
        _until(lambda: engine.queue_depth == 2)
        release.set()
        request.join(120)
        assert answer["r"].status_code == 200, answer["r"].text
        assert sample.submitted < interactive.submitted  # first come, but not first served:
        assert sample.first_step.wait(120)
        jobs = {"gate": spy.of_job(gate), "generate": interactive, "calibration sample": sample}
        assert sorted(jobs, key=lambda name: jobs[name].started) == ["gate", "generate", "calibration sample"]
        job_id = r.json()["job_id"]
        httpx.delete(f"{url}/calibrate/{job_id}")
        _until(lambda: httpx.get(f"{url}/calibrate/{job_id}").json()["status"] not in ("queued", "running"), 120)


def _until(cond, timeout: float = 60) -> None:
    """Poll `cond` (a state that, once reached, holds) until true or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.mark.slow
def test_restart_marks_interrupted_and_resume_reuses_scores(engine, settings):
    with TestClient(create_app(settings, engine)) as c:
        job_id = c.post("/calibrate", json={"n": 10, "max_tokens": 3, "dataset": "qa.jsonl"}).json()["job_id"]
        _wait(c, job_id)
    # a job that was running when the server stopped
    store = JobStore(settings.state_dir / "jobs.sqlite3")
    request = store.get(job_id)["request"]
    stale = store.create({**request, "n": 12})
    store.update(stale, status="running", done=5, total=12)
    with TestClient(create_app(settings, engine)) as c:
        job = c.get(f"/calibrate/{stale}").json()
        assert job["status"] == "interrupted" and job["progress"]["done"] == 5
        assert c.post(f"/calibrate/{job_id}/resume").status_code == 409  # succeeded jobs are not resumed
        assert c.post(f"/calibrate/{stale}/resume").status_code == 202
        job, _ = _wait(c, stale)
        assert job["status"] == "succeeded" and job["progress"]["done"] == 12
    # the 10 samples of the first job were checkpointed and reused: only 2 more were scored
    (scores,) = (settings.reports_dir / "scores").glob("*_train_*.jsonl")
    assert len(scores.read_text().splitlines()) == 12


def test_a_dataset_name_too_long_for_the_file_system_is_a_400(client):
    r = client.post("/calibrate", json={"n": 10, "dataset": "x" * 5000})
    assert r.status_code == 400 and "data folder" in r.text
