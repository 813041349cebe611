"""The command line: generation on the embedded default model, and clean failures."""

import json
import os
import subprocess
import sys
import time

import httpx

import pytest

from app.cli import main


def test_generate_default_model_answers_paris(capsys):
    main(["generate", "What is the capital of France?", "--max-tokens", "20"])
    out = capsys.readouterr().out
    assert "Paris" in out
    assert "ℏₛ" in out and "PRI" in out and "[quadrant:" in out


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_unknown_model_exits_nonzero_with_one_line(command, tmp_path):
    args = [command, "--model", str(tmp_path / "nope")] + (["hi"] if command == "generate" else [])
    r = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("halluwatch: cannot load model") and "nope" in last


def test_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "serve" in r.stdout and "generate" in r.stdout


def test_score_command_flags_the_wrong_answer(capsys):
    pri = {}
    for answer in ("Paris", "Berlin"):
        main(["score", "--prompt", "What is the capital of France?", "--response",
              f"The capital of France is {answer}.", "--json"])
        pri[answer] = __import__("json").loads(capsys.readouterr().out)["scores"]["pri"]
    assert pri["Berlin"] > 2 * pri["Paris"]


def test_cli_and_server_give_the_same_risk(capsys):
    """One assessment path: the CLI serves the same params (and probe) as the server would."""
    from fastapi.testclient import TestClient

    from app.engine import Engine
    from app.http.app import create_app
    from app.settings import Settings

    question = "What is the capital of Kenya?"
    main(["generate", question, "--max-tokens", "12", "--json"])
    cli = json.loads(capsys.readouterr().out)
    engine = Engine("default")
    engine.start()
    try:
        with TestClient(create_app(Settings(), engine)) as c:
            server = c.post("/generate", json={"prompt": question, "chat_template": True, "max_tokens": 12}).json()
    finally:
        engine.stop()
    assert cli["text"] == server["text"]
    assert cli["risk"]["detector"] == server["risk"]["detector"] and cli["risk"]["detector"] is not None
    assert cli["risk"]["probability"] == pytest.approx(server["risk"]["probability"], rel=1e-5, abs=1e-12)
    assert cli["risk"]["in_distribution"] == server["risk"]["in_distribution"]
    assert cli["quadrant"] == server["quadrant"]


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_cli_runs_exit_cleanly(tiny_model_path, tmp_path):
    env = {**os.environ, "HALLUWATCH_HOME": str(tmp_path)}
    for args in (["generate", "hello", "--raw", "--max-tokens", "4"],
                 ["score", "--prompt", "hello", "--response", "world", "--raw"]):
        r = _cli(*args, "--model", str(tiny_model_path("llama")), "--precision", "native", env=env)
        assert r.returncode == 0, r.stderr
        assert "terminate called" not in r.stderr and "[finish:" in r.stdout


def test_cli_beside_a_live_server_leaves_its_running_job_running(engine, tiny_model_path, tmp_path):
    from support.live_server import live_server
    from support.qa_data import write_qa

    from app.http.app import create_app
    from app.settings import Settings

    settings = Settings(home=tmp_path)
    settings.data_dir.mkdir(parents=True)
    write_qa(settings.data_dir / "qa.jsonl", 400)
    with live_server(create_app(settings, engine)) as url, httpx.Client(base_url=url, timeout=30) as c:
        job_id = c.post("/calibrate", json={"n": 400, "max_tokens": 16, "dataset": "qa.jsonl"}).json()["job_id"]
        deadline = time.monotonic() + 60
        while c.get(f"/calibrate/{job_id}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        env = {**os.environ, "HALLUWATCH_HOME": str(tmp_path)}  # the same data folder and job database
        r = _cli("generate", "hello", "--raw", "--max-tokens", "2", "--model", str(tiny_model_path("llama")),
                 "--precision", "native", env=env)
        assert r.returncode == 0, r.stderr
        assert c.get(f"/calibrate/{job_id}").json()["status"] == "running"
        assert c.post("/calibrate", json={"n": 20, "dataset": "qa.jsonl"}).status_code == 409  # still the one job
        assert c.delete(f"/calibrate/{job_id}").status_code == 200
