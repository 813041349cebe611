"""The detection-quality table of docs/results.md, generated from the committed params and reports.

docs/results.md holds the table between ``<!-- quality-table: PARAMS_FILE -->`` and
``<!-- /quality-table -->`` (PARAMS_FILE relative to the repository root); this script rebuilds it
from PARAMS_FILE and the reports written by `halluwatch evaluate` for it
(``reports/<params stem>_eval_<task>_n<N>.json``, one per task).

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


def reports_for(params_path: Path, reports_dir: Path) -> dict:
    """The report of each task evaluated with these params (the largest n when there are several)."""
    found = {}
    for task in TASKS:
        paths = sorted(reports_dir.glob(f"{params_path.stem}_eval_{task}_n*.json"),
                       key=lambda p: int(p.stem.rsplit("_n", 1)[1]))
        if paths:
            found[task] = json.loads(paths[-1].read_text())
    return found


def table(params: dict, reports: dict) -> str:
    """The Markdown table: every detector on the calibration task's test split (with CI and the
    same-length AUROC) and on the other tasks with the same params."""
    own = params["task"]
    others = [t for t in TASKS if t in reports and t != own]
    main = reports[own]["metrics"]
    head = (f"| detector | what it reads | train CV AUROC ({own}) | {own} test AUROC [95% CI], n = {reports[own]['n']} "
            f"| {own} test, same-length pairs |"
            + "".join(f" {t} (transfer), n = {reports[t]['n']} |" for t in others))
    rows = [head, "|---|---|---:|---|---:|" + "---:|" * len(others)]
    chosen = params["risk"]["detector"]
    for name in params["ranking"]:
        d = main["all_detectors"][name]
        shown = f"**{name}** (`risk`)" if name == chosen else name
        transfer = "".join(f" {auroc_with_ci(reports[t]['metrics']['all_detectors'][name])} |" for t in others)
        rows.append(f"| {shown} | {describe(name, params)} | {d['cv_auroc']:.3f} | {auroc_with_ci(d)} "
                    f"| {num(d.get('auroc_same_length'))} |" + transfer)
    length = main.get("answer_length")
    if length:
        transfer = "".join(f" {auroc_with_ci(reports[t]['metrics']['answer_length'])} |" for t in others)
        rows.append("| *answer length* | model-free reference: words in the judged answer | | "
                    f"{auroc_with_ci(length)} | |" + transfer)
    return "\n".join(rows) + "\n"


def render(readme: str) -> str:
    """`readme` (the text of docs/results.md) with its quality table rebuilt."""
    match = BLOCK.search(readme)
    if match is None:
        raise SystemExit("the document has no <!-- quality-table: PARAMS --> … <!-- /quality-table --> block")
    params_path = REPO / match["params"]
    params = json.loads(params_path.read_text())
    new = table(params, reports_for(params_path, REPO / "reports"))
    return readme[:match.start("table")] + new + readme[match.end("table"):]


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
