"""Label-free calibration on a tiny model: each prompt's greedy answer and its K samples scored in
one batch, params fitted on the consistency target, resumed runs equal to uninterrupted ones,
evaluation against real labels; the CLI and HTTP options and their checks."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.calibration import runs
from app.calibration.halueval import DatasetError
from app.calibration.labelfree import answer_core, sample_seed
from app.calibration.questions import normalise
from app.calibration.scoring import RunSpec, checkpoint_path, read_checkpoint, score_all
from app.engine import Cancelled
from app.http.app import create_app
from app.settings import Settings

WORDS = "river dog fox city capital france year paris water london light tokyo japan england people model".split()
K, T = 4, 0.2  # on the tiny model, T = 0.2 gives both classes of the target


def _prompts(path, n=120):
    path.write_text("".join(f"What is the {WORDS[i % 16]} of {WORDS[i * 7 % 16]} {i}?\n" for i in range(n)))
    return path


def _spec(path, **kw):
    return RunSpec(**{"model_ref": "tiny", "task": "consistency", "n": 40, "max_tokens": 4, "sources": (str(path),),
                      "batch_size": 8, "n_samples": K, "temperature": T, **kw})


def test_records_hold_the_samples_and_their_agreement(engine, tmp_path):
    spec = _spec(_prompts(tmp_path / "p.txt"), n=10, probes=False)
    assert spec.prompt_format == "chat" and spec.label == "consistency-p"
    samples, split = spec.samples("train", tmp_path)
    ckpt = checkpoint_path(tmp_path, engine.lm, spec, "train")
    assert ckpt.name.endswith(f"_consistency_train_seed42_mt4_chat_k{K}_t{T:g}_p1.jsonl")
    records = score_all(engine, samples, spec, ckpt)
    assert [r["key"] for r in records] == [s.key for s in samples]
    for s, r in zip(samples, records):
        assert len(r["samples"]) == K and r["gold_label"] is None and r["label"] in (0, 1)
        cores = [answer_core(t, s.prompt) for t in r["samples"]]
        assert r["agreement"] == pytest.approx(sum(c == answer_core(r["text"], s.prompt) for c in cores) / K,
                                               abs=1 / K + 1e-9) or r["clusters"] > 1
        assert r["label"] == int(r["agreement"] < 0.5)
    assert sample_seed(spec, "p:0", 1) == sample_seed(spec, "p:0", 1) != sample_seed(spec, "p:0", 2)


def test_resume_after_interruption_equals_uninterrupted(engine, tmp_path):
    spec = _spec(_prompts(tmp_path / "p.txt"), n=12, batch_size=2, probes=False)
    samples, _ = spec.samples("train", tmp_path)
    full = score_all(engine, samples, spec, tmp_path / "full.jsonl")
    stop = threading.Event()
    ckpt = tmp_path / "part.jsonl"
    with pytest.raises(Cancelled):
        score_all(engine, samples, spec, ckpt, progress=lambda done, total: done >= 5 and stop.set(), cancelled=stop)
    kept = read_checkpoint(ckpt)
    assert 5 <= len(kept) < len(samples) and all(len(r["samples"]) == K for r in kept.values())
    with open(ckpt, "a") as f:
        f.write('{"key": "p:torn')  # a crash in the middle of a write
    assert score_all(engine, samples, spec, ckpt) == full  # the same samples: seeds are per prompt, not per batch


def _questions_answered_half_right(engine, path, scratch):
    """A question file on which the tiny model's greedy answers (max_tokens 4) are right for about
    half of the test questions: their alias is the answer the model gives."""
    def write(aliases):
        path.write_text("".join(json.dumps({"question": f"What is the {WORDS[i % 16]} of {WORDS[i * 7 % 16]} {i}?",
                                            "answer": [aliases.get(i, "zzz-never-said")]}) + "\n"
                                for i in range(120)))
    write({})
    test = RunSpec("tiny", task="answers", n=40, max_tokens=4, sources=(str(path),), batch_size=8, probes=False)
    said = {r["item"]: normalise(r["text"]) for r in score_all(engine, test.samples("test", scratch)[0], test,
                                                                 scratch / "said.jsonl")}
    write({i: text for i, text in said.items() if text and i % 2})
    return path


@pytest.mark.slow
def test_calibrate_writes_label_free_params_and_evaluate_uses_real_labels(engine, tmp_path):
    questions = _questions_answered_half_right(engine, tmp_path / "q.jsonl", tmp_path)
    spec = _spec(questions, n_boot=100)
    path = runs.calibrate(engine, spec, tmp_path / "out", tmp_path / "reports")
    params = json.loads(path.read_text())
    lf = params["protocol"]["label_free"]
    assert params["task"] == "consistency" and params["protocol"]["dataset"] == "deployment prompts"
    assert (lf["samples"], lf["temperature"], lf["top_p"]) == (K, T, 1.0)
    assert {"answer_rule", "cluster_rule", "target_rule", "seed_rule"} <= lf.keys()
    balance = lf["target_balance"]
    assert balance["inconsistent"] + balance["consistent"] == 40 and min(balance.values()) > 0
    records = read_checkpoint(checkpoint_path(tmp_path / "reports", engine.lm, spec, "train")).values()
    assert balance["inconsistent"] == sum(r["label"] for r in records)  # fitted on the target, not gold
    assert lf["target_matches_gold"]["n"] == 40
    assert params["risk"]["detector"] in params["detectors"] and "probe" in params
    test = RunSpec("tiny", task="answers", n=40, max_tokens=4, sources=(str(questions),), batch_size=8, n_boot=100)
    report = json.loads(runs.evaluate(engine, path, test, tmp_path / "reports", tmp_path / "reports").read_text())
    scored = read_checkpoint(checkpoint_path(tmp_path / "reports", engine.lm, test, "test"))
    gold = [r["label"] for r in scored.values()]
    assert 0 < sum(gold) < len(gold)
    assert report["params_task"] == "consistency" and report["task"] == "answers"
    assert report["metrics"]["n_hallucinated"] == sum(gold)  # scored against the gold labels
    assert report["metrics"]["risk"]["detector"] == params["risk"]["detector"]


def test_a_target_of_one_class_is_refused_with_the_reason(engine, tmp_path):
    """At a temperature near 0 every sample is the greedy answer: all consistent, nothing to fit."""
    spec = _spec(_prompts(tmp_path / "p.txt"), n=10, n_samples=2, temperature=1e-3, probes=False)
    with pytest.raises(DatasetError, match="10 of the 10 training samples are labelled consistent"):
        runs.calibrate(engine, spec, tmp_path / "out", tmp_path / "reports")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no params, no probe files


@pytest.fixture
def client(engine, tmp_path):
    settings = Settings(home=tmp_path, params_dir=tmp_path / "params")
    settings.data_dir.mkdir(parents=True)
    _prompts(settings.data_dir / "asked.txt")
    (settings.data_dir / "bad.jsonl").write_text('{"prompt": "ok"}\n{"messages": [{"role": "user"}]}\n')
    with TestClient(create_app(settings, engine)) as c:
        yield c


@pytest.mark.parametrize("field,value", [("samples", 0), ("samples", 21), ("temperature", 0), ("temperature", -1),
                                         ("temperature", 2.5), ("top_p", 0), ("top_p", 1.5), ("samples", "five")])
def test_http_rejects_bad_sampling_options_naming_the_field(client, field, value):
    r = client.post("/calibrate", json={"task": "consistency", "sources": ["asked.txt"], field: value})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize("shares", [[1, 2], [0], ["a"]])
def test_http_rejects_shares_that_do_not_fit_the_sources(client, shares):
    r = client.post("/calibrate", json={"task": "consistency", "n": 10, "sources": ["asked.txt"], "shares": shares})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "shares"]
    assert client.get("/calibrate").json() == []


def test_http_rejects_a_bad_prompt_file_before_scoring(client):
    r = client.post("/calibrate", json={"task": "consistency", "n": 10, "sources": ["bad.jsonl"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "sources"]
    assert "bad.jsonl, line 2" in r.text and "messages[0].content" in r.text
    assert client.get("/calibrate").json() == []


@pytest.mark.slow
def test_http_label_free_job_runs_to_params(client):
    r = client.post("/calibrate", json={"task": "consistency", "n": 40, "sources": ["asked.txt"], "samples": K,
                                        "temperature": T, "max_tokens": 4, "batch_size": 8, "probes": False})
    assert r.status_code == 202
    deadline = time.monotonic() + 120
    while (job := client.get(f"/calibrate/{r.json()['job_id']}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["done"] == job["progress"]["total"] == 40
    params = json.loads(Path(job["result"]["params_path"]).read_text())
    assert params["task"] == "consistency" and params["protocol"]["label_free"]["samples"] == K


def _cli(*args, home):
    env = {**os.environ, "HALLUWATCH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_checks_options_and_prompt_files_before_loading_the_model(tmp_path):
    r = _cli("calibrate", "--task", "consistency", "--temperature", "0", home=tmp_path)
    assert r.returncode == 2 and "temperature must be a number > 0" in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("\n\n")
    r = _cli("calibrate", "--task", "consistency", "--sources", str(bad), "--model", "no-such-model", home=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"halluwatch: sources: {bad}: no prompts " \
                                                                      "(no non-blank line)"
    assert not (tmp_path / "calibrations").exists()
    r = _cli("calibrate", "--task", "answers", "--shares", "2,x", home=tmp_path)
    assert r.returncode == 2 and "shares must be positive integers" in r.stderr
    r = _cli("calibrate", "--task", "answers", "--shares", "2,1", "--model", "no-such-model", home=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("halluwatch: shares: shares must be 3")
