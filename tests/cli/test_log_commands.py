"""`halluwatch export` and `halluwatch calibrate --from-log` on a log written by a real app."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from support import REPO_ROOT
from support.params import write_params

from app.http.app import create_app
from app.settings import Settings

PROMPTS = [f"Question {i}: what comes after {i}?" for i in range(24)]


def halluwatch(args: list, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HALLUWATCH_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO_ROOT)


def fill_log(engine, home: Path, keep_text: bool, label_every: int = 1) -> dict:
    """Serve the tiny model with the log in `home`, answer PROMPTS, label every `label_every`-th
    response (alternating); {response id: (label, logged text)}."""
    write_params(home / "p.json", engine.lm)
    labelled = {}
    app = create_app(Settings(home=home, params=home / "p.json", log_text=keep_text), engine)
    with TestClient(app) as c:
        for i, prompt in enumerate(PROMPTS):
            body = c.post("/generate", json={"prompt": prompt, "chat_template": True, "max_tokens": 6}).json()
            if i % label_every == 0:
                label = ("hallucinated", "correct")[(i // label_every) % 2]
                assert c.post("/feedback", json={"response_id": body["response_id"], "label": label}).status_code == 200
                labelled[body["response_id"]] = (label, body["text"])
    return labelled


@pytest.fixture(scope="module")
def logged_home(engine, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return home, fill_log(engine, home, keep_text=True, label_every=2)


def test_export_in_every_format(logged_home, tmp_path):
    home, labelled = logged_home
    r = halluwatch(["export", "--since", "1h"], home)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == len(PROMPTS) and rows[0]["prompt"] == PROMPTS[0] and "hbar_s" in rows[0]["scores"]
    assert {row["response_id"]: row["label"] for row in rows if row["label"]} == \
        {rid: label for rid, (label, _) in labelled.items()}
    r = halluwatch(["export", "--format", "csv", "--labelled"], home)
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(table) == len(labelled) and "score_hbar_s" in table[0]
    out = tmp_path / "log.parquet"
    r = halluwatch(["export", "--format", "parquet", "--out", str(out)], home)
    assert r.returncode == 0 and pq.read_table(out).num_rows == len(PROMPTS)
    assert halluwatch(["export", "--until", "2000-01-01T00:00:00"], home).stdout == ""
    for bad in (["--since", "yesterday"], ["--format", "parquet"]):
        r = halluwatch(["export", *bad], home)
        assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("halluwatch: "), r.stderr
    assert halluwatch(["export"], tmp_path / "empty").returncode == 2


@pytest.mark.slow
def test_calibrate_from_log_replays_the_labelled_entries(logged_home, tiny_model_path):
    home, labelled = logged_home
    r = halluwatch(["calibrate", "--from-log", "--model", str(tiny_model_path("llama")), "--precision", "native",
                    "--batch-size", "1"], home)
    assert r.returncode == 0, r.stderr[-3000:]
    params = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert params["task"] == "logged" and params["n"] == len(labelled)
    assert params["protocol"]["dataset"] == "response log" and params["protocol"]["prompt_format"] == "chat"
    scores = next(home.rglob(Path(params["scores_file"]).name))
    records = [json.loads(line) for line in scores.read_text().splitlines()]
    by_id = {rec["key"].removeprefix("log:"): rec for rec in records}
    assert set(by_id) == set(labelled)
    for rid, (label, text) in labelled.items():
        assert by_id[rid]["label"] == (label == "hallucinated")
        assert by_id[rid]["text"] == text  # greedy replay reproduces the logged response


def test_calibrate_from_log_refuses_entries_without_text(engine, tmp_path):
    fill_log(engine, tmp_path, keep_text=False, label_every=6)
    r = halluwatch(["calibrate", "--from-log"], tmp_path)
    assert r.returncode == 2
    assert "4 of the 4 labelled entries" in r.stderr and "HALLUWATCH_LOG_TEXT" in r.stderr
    r = halluwatch(["calibrate", "--from-log", "--until", "2000-01-01"], tmp_path)
    assert r.returncode == 2 and "no labelled entries" in r.stderr


@pytest.mark.slow
def test_calibrate_from_log_refuses_another_models_entries(logged_home):
    home, labelled = logged_home
    r = halluwatch(["calibrate", "--from-log"], home)  # the default model, not the tiny one that answered
    assert r.returncode == 2 and f"{len(labelled)} logged by another model" in r.stderr


def test_an_unreachable_log_is_one_clear_line_without_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("HALLUWATCH_LOG_URL", "postgresql://someone:s3cret@127.0.0.1:1/nowhere")
    r = halluwatch(["export"], tmp_path, timeout=120)
    assert r.returncode == 2 and "cannot open the response log at postgresql" in r.stderr
    assert "s3cret" not in r.stderr and "Traceback" not in r.stderr
