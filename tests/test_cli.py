"""The command line: generation on the embedded default model, and clean failures."""

import subprocess
import sys

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
