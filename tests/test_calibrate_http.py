"""POST/GET/DELETE /calibrate with a tiny model: lifecycle, failures, cancel, 409, restart, hot switch."""

import json
import time

import pytest
from fastapi.testclient import TestClient

from app.calibration.background import JobStore
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


def test_lifecycle_and_hot_switch(client, settings):
    assert client.get("/model").json()["params"] is None
    r = client.post("/calibrate", json={"task": "qa", "n": 20, "max_tokens": 3, "dataset": "qa.jsonl",
                                        "activate": True})
    assert r.status_code == 202, r.text
    job, seen = _wait(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert "running" in {s for s, _ in seen}
    done = [d for s, d in seen if s == "running"]
    assert done == sorted(done) and job["progress"] == {"done": 20, "total": 20, "eta_s": 0.0}
    result = job["result"]
    params_path = result["params_path"]
    saved = json.loads(open(params_path).read())
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


def test_failure_later_leaves_params_untouched(client, settings):
    r = client.post("/calibrate", json={"n": 10, "max_tokens": 2, "dataset": "long.jsonl", "activate": True})
    job, _ = _wait(client, r.json()["job_id"])
    assert job["status"] == "failed" and "context" in job["error"]
    assert not settings.calibrations_dir.exists() or list(settings.calibrations_dir.iterdir()) == []
    assert client.get("/model").json()["params"] is None


def test_cancel_and_conflict(client):
    r = client.post("/calibrate", json={"n": 2 * (N_ITEMS // 2), "max_tokens": 6, "dataset": "qa.jsonl"})
    job_id = r.json()["job_id"]
    second = client.post("/calibrate", json={"n": 10, "max_tokens": 2, "dataset": "qa.jsonl"})
    assert second.status_code == 409
    # an interactive request is answered while the job runs (it goes ahead of the job's samples)
    assert client.post("/generate", json={"prompt": "hello there", "max_tokens": 4}).status_code == 200
    assert client.get(f"/calibrate/{job_id}").json()["status"] in ("queued", "running")
    assert client.delete(f"/calibrate/{job_id}").status_code == 200
    job, _ = _wait(client, job_id)
    assert job["status"] == "cancelled" and job["progress"]["done"] < job["progress"]["total"]
    assert client.delete(f"/calibrate/{job_id}").status_code == 409
    assert client.get("/calibrate/nope").status_code == 404


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
