"""The detection-quality table of docs/results.md, generated from the committed params and reports.

docs/results.md holds each table between ``<!-- quality-table: PARAMS_FILE -->`` and
``<!-- /quality-table -->`` (PARAMS_FILE relative to the repository root); this script rebuilds
them from PARAMS_FILE and the reports written by `halluwatch evaluate` for it
(``reports/<params stem>_eval_<task>_n<N>.json``, one per evaluated task; for own-answer params
the task names the sources, e.g. ``answers-nq_open``).

    python bench/readme_table.py            # rewrite the table in docs/results.md
    python bench/readme_table.py --check    # exit 1 if docs/results.md is not what the reports say
"""

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.calibration.report import auroc_with_ci, describe, num  # noqa: E402

DOC = REPO / "docs" / "results.md"
BLOCK = re.compile(r"(<!-- quality-table: (?P<params>\S+) -->\n)(?P<table>.*?)(<!-- /quality-table -->)", re.S)
TASKS = ("qa", "dialogue", "summarization")
REPORT = re.compile(r"_eval_(?P<task>.+)_n(?P<n>\d+)$")


def reports_for(params_path: Path, reports_dir: Path) -> dict:
    """The report of each task evaluated with these params (the largest n when there are several),
    HaluEval tasks first, then the others by name."""
    found = {}
    for path in reports_dir.glob(f"{params_path.stem}_eval_*.json"):
        if (m := REPORT.search(path.stem)) and int(m["n"]) >= found.get(m["task"], (-1,))[0]:
            found[m["task"]] = (int(m["n"]), path)
    order = sorted(found, key=lambda t: (TASKS.index(t) if t in TASKS else len(TASKS), t))
    return {task: json.loads(found[task][1].read_text()) for task in order}


def own_task(params: dict) -> str:
    """The task label of the split the params were calibrated on (own answers: with their sources)."""
    if params["task"] != "answers":
        return params["task"]
    return "-".join(["answers", *params["protocol"]["sources"]])


def table(params: dict, reports: dict) -> str:
    """The Markdown table: every detector on the calibration task's test split (with CI and the
    same-length AUROC) and on the other tasks with the same params."""
    own = own_task(params)
    others = [t for t in reports if t != own]
    main = reports[own]["metrics"]
    length = main.get("answer_length")  # HaluEval only: the judged answer's length
    same = f" {own} test, same-length pairs |" if length else ""
    kind = "one source" if params["task"] == "answers" else "transfer"  # own answers: a source of the mixture
    selected_by = params["risk"].get("selected_by", "CV AUROC")  # leave-one-source-out with several sources
    head = (f"| detector | what it reads | train {selected_by} ({own}) | {own} test AUROC [95% CI], "
            f"n = {reports[own]['n']} |{same}" + "".join(f" {t} ({kind}), n = {reports[t]['n']} |" for t in others))
    rows = [head, "|---|---|---:|---|" + "---:|" * (len(others) + bool(length))]
    chosen = params["risk"]["detector"]
    for name in params["ranking"]:
        d = main["all_detectors"][name]
        shown = f"**{name}** (`risk`)" if name == chosen else name
        transfer = "".join(f" {auroc_with_ci(reports[t]['metrics']['all_detectors'][name])} |" for t in others)
        same = f" {num(d.get('auroc_same_length'))} |" if length else ""
        rows.append(f"| {shown} | {describe(name, params)} | {d['cv_auroc']:.3f} | {auroc_with_ci(d)} |{same}"
                    + transfer)
    if length:
        transfer = "".join(f" {auroc_with_ci(reports[t]['metrics']['answer_length'])} |" for t in others)
        rows.append("| *answer length* | model-free reference: words in the judged answer | | "
                    f"{auroc_with_ci(length)} | |" + transfer)
    return "\n".join(rows) + "\n"


def _rebuilt(match: re.Match) -> str:
    params_path = REPO / match["params"]
    params = json.loads(params_path.read_text())
    return match[1] + table(params, reports_for(params_path, REPO / "reports")) + match[4]


def render(readme: str) -> str:
    """`readme` (the text of docs/results.md) with each quality table rebuilt."""
    if BLOCK.search(readme) is None:
        raise SystemExit("the document has no <!-- quality-table: PARAMS --> … <!-- /quality-table --> block")
    return BLOCK.sub(_rebuilt, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when the table differs from the reports")
    parser.add_argument("--doc", "--readme", dest="doc", default=str(DOC),
                        help="the Markdown file holding the table (default: docs/results.md)")
    args = parser.parse_args()
    from tables import update  # bench/, the script's folder

    update(Path(args.doc), render, args.check, "quality table", "python bench/readme_table.py")


if __name__ == "__main__":
    main()
