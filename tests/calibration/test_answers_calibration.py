"""Own-answer calibration runs on a tiny model: the model answers as a chat, each answer labelled by
its question's gold aliases; bad sources are refused before anything is scored."""

import json
import os
import subprocess
import sys

from fastapi.testclient import TestClient
from support.params import write_params

from app.calibration.questions import is_correct, read_questions
from app.calibration.scoring import RunSpec, read_checkpoint, score_all
from app.http.app import create_app
from app.settings import Settings


def _questions(path, n, answer="zzz-never-said"):
    path.write_text("".join(json.dumps({"question": f"What is item {i}?", "answer": [answer]}) + "\n"
                            for i in range(n)))
    return path


def test_answers_are_chat_generated_and_labelled_by_their_aliases(engine, tmp_path):
    path = _questions(tmp_path / "q.jsonl", 20)
    spec = RunSpec("tiny", task="answers", n=10, max_tokens=4, sources=(str(path),), batch_size=4, probes=False)
    assert spec.prompt_format == "chat"
    samples, split = spec.samples("train", tmp_path)
    records = score_all(engine, samples, spec, tmp_path / "ckpt.jsonl")
    assert [r["key"] for r in records] == [q.key for q in samples] and len(records) == 10
    questions = {q.key: q for q in read_questions(path)}
    for r in records:  # the label is the rule applied to the model's own text
        assert r["label"] == (0 if is_correct(r["text"], questions[r["key"]].answers) else 1) == 1
    assert read_checkpoint(tmp_path / "ckpt.jsonl").keys() == {r["key"] for r in records}
    assert split["label_rule"].startswith("alias_in_answer")


def test_http_refuses_bad_sources_before_scoring(engine, tmp_path):
    settings = Settings(home=tmp_path)
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "bad.jsonl").write_text('{"question": "Q?", "answer": ["A"]}\n{"answer": ["B"]}\n')
    with TestClient(create_app(settings, engine)) as c:
        r = c.post("/calibrate", json={"task": "answers", "n": 10, "sources": ["bad.jsonl"]})
        assert r.status_code == 422 and "line 2" in r.text and "question" in r.text and "bad.jsonl" in r.text
        r = c.post("/calibrate", json={"task": "answers", "n": 10, "sources": ["../bad.jsonl"]})
        assert r.status_code == 400 and "sources" in r.text
        r = c.post("/calibrate", json={"task": "answers", "n": 10, "sources": []})
        assert r.status_code == 422 and "sources" in r.text
        assert c.get("/calibrate").json() == []


def test_cli_run_whose_answers_are_all_wrong_exits_2_and_writes_no_params(tiny_model_path, tmp_path):
    path = _questions(tmp_path / "q.jsonl", 40)
    env = {**os.environ, "HALLUWATCH_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-m", "app.cli", "calibrate", "--task", "answers", "--sources", str(path),
                        "--n", "12", "--max-tokens", "3", "--no-probes", "--model", str(tiny_model_path("llama")),
                        "--precision", "native"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("halluwatch: n: 0 of the 12 training samples are labelled correct")
    assert not (tmp_path / "home" / "calibrations").exists()


def test_served_params_say_what_traffic_they_were_calibrated_on(engine, tmp_path):
    write_params(tmp_path / "p.json", engine.lm, task="answers")
    with TestClient(create_app(Settings(home=tmp_path, params_dir=tmp_path), engine)) as c:
        assert c.get("/model").json()["params"]["task"] == "answers"


def test_an_edited_question_is_answered_again_not_read_from_the_checkpoint(engine, tmp_path):
    path = _questions(tmp_path / "q.jsonl", 20)
    spec = RunSpec("tiny", task="answers", n=10, max_tokens=4, sources=(str(path),), batch_size=4, probes=False)
    ckpt = tmp_path / "ckpt.jsonl"
    first = score_all(engine, spec.samples("train", tmp_path)[0], spec, ckpt)
    assert all(r["label"] == 1 for r in first)
    lines = ckpt.read_text().count("\n")
    said = first[0]["text"].split()[0]  # the same file name and items, but the first answer's alias changed
    edited = path.read_text().splitlines()
    item = int(first[0]["key"].split(":")[1])
    edited[item] = json.dumps({"question": f"What is item {item}?", "answer": [said]})
    path.write_text("\n".join(edited) + "\n")
    again = score_all(engine, spec.samples("train", tmp_path)[0], spec, ckpt)
    assert ckpt.read_text().count("\n") == lines + 1  # only the edited question was answered again
    assert again[0]["label"] == 0 and [r["label"] for r in again[1:]] == [r["label"] for r in first[1:]]
