"""The command line: generation on the embedded default model, and clean failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import REPO_ROOT
from support.live_server import free_port
from support.qa_data import write_qa

from app.calibration.params import load_params
from app.cli import main
from signals.selection import one_se_choice


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


# --- calibrate, evaluate and serve --params on the tiny model, as a user runs them -------------------

def _cli(args: list, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`halluwatch ARGS` in a subprocess with HALLUWATCH_HOME=home; it must not abort on exit."""
    env = {**os.environ, "HALLUWATCH_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=REPO_ROOT)
    assert "terminate called" not in r.stderr, r.stderr[-2000:]
    return r


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def cli_run(tiny_model_path, tmp_path_factory):
    """`halluwatch calibrate` on the tiny llama and a synthetic QA file: (model, home, data, result)."""
    model = str(tiny_model_path("llama"))
    root = tmp_path_factory.mktemp("cli")
    home, data = root / "home", write_qa(root / "qa.jsonl", 40)
    r = _cli(["calibrate", "--model", model, "--precision", "native", "--dataset", str(data), "--n", "20",
              "--max-tokens", "3"], home)
    return model, home, data, r


@pytest.mark.slow
def test_calibrate_prints_the_params_path_last(cli_run, engine):
    model, home, _, r = cli_run
    assert r.returncode == 0, r.stderr[-2000:]
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.parent == home / "calibrations" and path.suffix == ".json"
    params = json.loads(path.read_text())
    assert params["n"] == 20 and params["protocol"]["max_tokens"] == 3 and params["model_ref"] == model
    assert params["model_fingerprint"] == engine.lm.fingerprint.as_dict()
    folds = {name: d["cv_auroc_folds"] for name, d in params["detectors"].items()}
    assert params["risk"]["detector"] == one_se_choice(params["ranking"], params["detectors"], folds)
    assert params["probe"] is not None
    assert load_params(path).probe is not None  # its probe file is beside it, checksum and all
    assert not (home / "state" / "active_calibrations.json").exists()  # not activated without --activate


@pytest.mark.slow
def test_evaluate_prints_the_report_path_last(cli_run):
    _, home, data, cal = cli_run
    path = Path(cal.stdout.strip().splitlines()[-1])
    r = _cli(["evaluate", "--params", str(path), "--precision", "native", "--dataset", str(data), "--n", "20"], home)
    assert r.returncode == 0, r.stderr[-2000:]
    report = Path(r.stdout.strip().splitlines()[-1])
    assert report.parent == home / "reports" and report.suffix == ".json"
    body = json.loads(report.read_text())
    assert body["params"] == path.name and body["n"] == 20 and body["max_tokens"] == 3  # the params' protocol
    assert list(body["metrics"]["all_detectors"]) == json.loads(path.read_text())["ranking"]
    assert report.with_suffix(".md").is_file()


@pytest.mark.slow
def test_serve_params_serves_them(cli_run):
    model, home, _, cal = cli_run
    path = Path(cal.stdout.strip().splitlines()[-1])
    port = free_port()
    env = {**os.environ, "HALLUWATCH_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", model, "--precision", "native",
                             "--params", str(path), "--port", str(port)], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _up(url):
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)
        served = httpx.get(f"{url}/model").json()
        assert served["params"]["path"] == str(path) and served["params_source"] == "flag"
        assert served["params"]["probe"]["position"] == json.loads(path.read_text())["probe"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM) and "terminate called" not in stderr, stderr[-2000:]


@pytest.mark.slow
def test_serve_refuses_a_probe_file_with_a_bad_checksum(cli_run, tmp_path):
    """Refused at start (before listening) with exit status != 0 and one line naming the file."""
    model, home, _, cal = cli_run
    shipped = Path(cal.stdout.strip().splitlines()[-1])
    params = json.loads(shipped.read_text())
    path = tmp_path / shipped.name
    path.write_bytes(shipped.read_bytes())
    for entry in params["detectors"].values():
        if "file" in entry:
            (tmp_path / entry["file"]).write_bytes((shipped.parent / entry["file"]).read_bytes())
    probe = tmp_path / params["detectors"][f"probe_{params['probe']}"]["file"]
    data = probe.read_bytes()
    probe.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = _cli(["serve", "--model", model, "--precision", "native", "--params", str(path), "--port", str(free_port())],
             home, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    # the engine thread's "loaded" log line may come after it, so look for the line, not the last one
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("halluwatch: ")]
    assert str(path) in line and str(probe) in line and "SHA-256" in line and "does not match" in line, line


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


def test_cli_runs_exit_cleanly(tiny_model_path, tmp_path):
    for args in (["generate", "hello", "--raw", "--max-tokens", "4"],
                 ["score", "--prompt", "hello", "--response", "world", "--raw"]):
        r = _cli([*args, "--model", str(tiny_model_path("llama")), "--precision", "native"], tmp_path)
        assert r.returncode == 0, r.stderr  # and no "terminate called" (checked by _cli)
        assert "[finish:" in r.stdout


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
        # the same data folder and job database
        r = _cli(["generate", "hello", "--raw", "--max-tokens", "2", "--model", str(tiny_model_path("llama")),
                  "--precision", "native"], tmp_path)
        assert r.returncode == 0, r.stderr
        assert c.get(f"/calibrate/{job_id}").json()["status"] == "running"
        assert c.post("/calibrate", json={"n": 20, "dataset": "qa.jsonl"}).status_code == 409  # still the one job
        assert c.delete(f"/calibrate/{job_id}").status_code == 200
