"""What the benches share: the spread of paired ratios, a goal verdict and the `--json` result file.

A result file holds the numbers a docs table shows, plus how they were obtained (`bench`,
`command`, `date`, `commit`, `machine`); `bench/tables.py` renders the tables of docs/results.md
from the files committed in bench/results/.
"""

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


GOAL_TESTS = {"≥": float.__ge__, "≤": float.__le__}


def spread(values: list, statistic: str) -> dict:
    """`value`: the median of `values`, with their quartiles (inclusive method), min, max and count;
    `statistic` says what the values are (e.g. "median of per-pair ratios")."""
    values = [float(v) for v in values]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"statistic": statistic, "value": statistics.median(values), "q1": q1, "q3": q3,
            "min": min(values), "max": max(values), "n": len(values)}


def round_orders(names: list) -> list:
    """Each rotation of `names`, then its reverse (A B C, C B A, B C A, A C B, C A B, B A C; two arms:
    A B, B A, B A, A B): a drift of the machine's speed favours no arm, and over a cycle every arm
    runs first, and after each other arm, equally often. Round i takes order i modulo their number."""
    rotations = [names[i:] + names[:i] for i in range(len(names))]
    return [order for r in rotations for order in (r, r[::-1])]


def judge(figure: dict, label: str, goal: tuple | None = None) -> dict:
    """`figure` (a `spread`) named `label` and, with a goal such as ("≥", 0.97), judged against it:
    adds "goal" ("≥ 0.97") and "pass"."""
    out = {"label": label, **figure}
    if goal is not None:
        out.update(goal=f"{goal[0]} {goal[1]}", **{"pass": GOAL_TESTS[goal[0]](float(figure["value"]), goal[1])})
    return out


def figure_text(figure: dict) -> str:
    """'0.981 (median of per-pair ratios; range 0.95–1.01; IQR 0.97–0.99; n = 7)': three significant
    digits; the range from 2 values on, the IQR from 4; a figure reconstructed from an older table
    shows only what that table gave."""
    f = "{:.3g}".format
    n = figure.get("n") or 0
    parts = [figure["statistic"]]
    if n >= 2 and figure.get("min") is not None:
        parts.append(f"range {f(figure['min'])}–{f(figure['max'])}")
    if n >= 4 and figure.get("q1") is not None:
        parts.append(f"IQR {f(figure['q1'])}–{f(figure['q3'])}")
    if n:
        parts.append(f"n = {n}")
    return f"{f(figure['value'])} ({'; '.join(parts)})"


def describe(figure: dict) -> str:
    """'ratio ours/plain = 0.981 (…); goal ≥ 0.97: PASS'."""
    text = f"{figure['label']} = {figure_text(figure)}"
    if "goal" in figure:
        text += f"; goal {figure['goal']}: {'PASS' if figure['pass'] else 'FAIL'}"
    return text


def exit_now(code: int) -> None:
    """Exit with `code` without interpreter teardown: MLX used on a thread other than the main one
    (the engine thread) often aborts at exit ("terminate called without an active exception",
    status 134; ml-explore/mlx#3126), which would hide the bench's own status."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_json_option(ap) -> None:
    ap.add_argument("--json", metavar="PATH", type=Path,
                    help="also write the result as JSON to PATH (default: print only)")


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"


def _commit() -> str | None:
    """The checkout's commit, with '+dirty' when tracked files other than the results in bench/results/
    differ from it (None outside git)."""
    def run(*args) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    try:
        dirty = run("status", "--porcelain", "-uno", "--", ".", ":!bench/results")
        return run("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


COMMIT = _commit()  # of the code the bench runs: taken when it starts, as the tree may change while it runs


def write_json(path: Path | None, bench: str, result: dict, argv: list | None = None) -> None:
    """Write `result` to `path` (nothing when path is None) with the bench's name, its command line,
    the UTC date, the commit checked out when the bench started and the machine."""
    if path is None:
        return
    argv = sys.argv[1:] if argv is None else argv
    doc = {"bench": bench, "command": shlex.join(["python", f"bench/{bench}.py", *argv]),
           "date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": COMMIT,
           "machine": machine(), **result}
    Path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
