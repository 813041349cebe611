"""The performance and robustness tables of docs/results.md, generated from the benches' JSON results.

Each table sits between ``<!-- bench-table: KIND FILE… -->`` and ``<!-- /bench-table -->``. The
FILEs (relative to the repository root) are results the benches wrote with ``--json``, committed
under bench/results/. KIND is `overhead` (one result of bench/overhead.py), `calibration-speed`
(one of bench/calibration_speed.py), `concurrency` (one of bench/concurrency.py), `idle-memory`
(bench/idle_memory.py), `label-free` (one of bench/labelfree.py), `robustness` (one row
per result of bench/fuzz.py, bench/load.py or bench/soak.py) or `response-log`
(bench/log_overhead.py, bench/log_durability.py). A result copied from an earlier docs table
instead of written by a run carries "reconstructed_from", and its table says so.

    python bench/tables.py            # rewrite the tables in docs/results.md
    python bench/tables.py --check    # exit 1 if docs/results.md is not what its result files say
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, describe, figure_text  # noqa: E402

DOC = REPO / "docs" / "results.md"
BLOCK = re.compile(r"(?P<open><!-- bench-table: (?P<kind>\S+)(?P<files>(?: \S+)+) -->\n)(?P<table>.*?)"
                   r"(?P<close><!-- /bench-table -->)", re.S)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def provenance(r: dict) -> str:
    """'`python bench/…` (2026-11-29, commit 0c79815)', and whether the numbers were re-run."""
    when = ", ".join(x for x in (r["date"][:10], r.get("commit") and f"commit {r['commit']}") if x)
    copied = f"; numbers copied from the {r['reconstructed_from']}, not re-run" if r.get("reconstructed_from") else ""
    return f"`{r['command']}` ({when}{copied})"


def overhead(results: list) -> str:
    rows = ["| machine | model | plain mlx-lm | halluwatch (all signals) | halluwatch ÷ plain | goal | result |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        arms = [("", r["ours_tok_s"], r["ratio"])]
        if "http_ratio" in r:  # bench/overhead.py --http
            arms.append((", server streaming over HTTP", r["http_tok_s"], r["http_ratio"]))
        for how, tok_s, ratio in arms:
            rows.append(f"| {r['machine']}, {r['dtype']} + {r['blas']} | {r['model']} | {r['plain_tok_s']:.2f} tok/s "
                        f"| {tok_s:.2f} tok/s{how} | {figure_text(ratio)} | {ratio['goal']} "
                        f"| {verdict(ratio['pass'])} |")
    return "\n".join(rows) + "\n\n" + "".join(f"Command: {provenance(r)}.\n" for r in results)


def calibration_speed(results: list) -> str:
    (r,) = results
    rows = ["| method | s/sample | samples/s | timed on |", "|---|---|---|---|"]
    for key, m in r["methods"].items():
        timed_on = f"{m['n']} samples"
        if "batches" in m:
            timed_on += f" in {m['batches']} batches"
        if m.get("s_per_batch"):
            timed_on += f", {m['s_per_batch']:.3g} s/batch"
        rows.append(f"| ({key}) {m['name']} | {m['s_per_sample']:.3g} | {m['samples_per_s']:.3g} | {timed_on} |")
    return ("\n".join(rows) + "\n\n" + "".join(f"- {describe(x)}\n" for x in r["ratios"])
            + f"\nMeasured on {r['machine']}, {r['dtype']} + {r['blas']}, model {r['model']}, max_tokens "
              f"{r['max_tokens']}: {provenance(r)}.\n")


def label_free_cost(r: dict) -> str:
    """The cost line: both arms timed in the run, or what each arm scored when one reused checkpoints."""
    if c := r.get("cost"):
        return (f"- cost (scoring, batched): {c['s_per_labelled_sample']:.2f} s per labelled sample, "
                f"{c['s_per_label_free_prompt']:.2f} s per label-free prompt = {c['s_per_answer']:.2f} s per answer "
                f"(greedy + {r['samples']} sampled); ratio {c['ratio']:.2f}, goal {c['goal']}: {verdict(c['pass'])}\n")
    timed = [f"{arm.replace('_', '-')} {a['scored']} in {a['scoring_seconds']:.0f} s"
             for arm, a in r["arms"].items() if a["scored"]]
    return (f"- cost: not compared in this run (an arm reused scored checkpoints); scored here: "
            f"{', '.join(timed) or 'nothing'}\n")


def _label_free_rows(name: str, t: dict, trained_on: dict) -> list:
    rows = []
    for arm, c in t["arms"].items():
        d = t["difference"].get(arm)
        diff = "" if d is None else (f"skipped: {d['skipped']}" if "skipped" in d else
                                     f"{d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]: {verdict(d['pass'])}")
        head = f"| {name} | {t['n']} ({t['wrong']}) | {arm.replace('_', '-')} | {trained_on[arm]} "
        if "skipped" in c:
            rows.append(head + f"| — | skipped: {c['skipped']} | | | {diff} |")
            continue
        inside = "—" if c["in_distribution"] is None else f"{c['in_distribution']:.0%}"
        rows.append(head + f"| {c['detector']} | {c['auroc']:.3f} [{c['auroc_ci'][0]:.3f}, {c['auroc_ci'][1]:.3f}] "
                           f"| {c['brier']:.3f} ({c['brier_base_rate']:.3f}) | {inside} | {diff} |")
    return rows


def _label_free_run(r: dict) -> str:
    """One run of bench/labelfree.py: its comparison (when an arm was fitted), the target, the cost."""
    arms = r["arms"]
    trained_on = {"labelled": f"gold labels, {r['n']} questions",
                  "label_free": f"agreement of {r['samples']} samples at T = {r['temperature']:g}, same questions",
                  "reference": f"`{Path(r['reference']).name}`" if r.get("reference") else ""}
    text = ""
    if any(a["params"] for a in arms.values()):
        rows = ["| test set | n (wrong) | calibration | trained on | selected detector | AUROC [95% CI] "
                "| Brier (constant) | in range | label-free − this AUROC [paired 95% CI]: ≥ −0.05 |",
                "|---|---|---|---|---|---|---|---|---|"]
        for name, t in r["tests"].items():
            rows += _label_free_rows(name, t, trained_on)
            for task, part in t.get("per_source", {}).items():
                rows += _label_free_rows(f"{name}, {task} only", part, trained_on)
        text += "\n".join(rows) + "\n\n"
    text += "".join(f"- {arm.replace('_', '-')}: refused ({a['refused']})\n"
                    for arm, a in arms.items() if a.get("refused"))
    if lf := arms["label_free"]["label_free"]:
        balance, gold = lf["target_balance"], lf["target_matches_gold"]
        text += (f"- target: {balance['inconsistent']} of {r['n']} training answers inconsistent "
                 f"({balance['share_inconsistent']:.0%}); it equals the gold label (wrong = 1) for {gold['share']:.0%} "
                 "of them\n")
    return (text + label_free_cost(r)
            + f"\nMeasured on {r['machine']} (shared), {r['dtype']} + {r['blas']}, model {r['model']}, "
              f"{r['n']} training questions of {r['sources']}, max_tokens {r['max_tokens']}, "
              f"batches of {r['batch_size']} questions: {provenance(r)}.\n")


def label_free(results: list) -> str:
    return "\n".join(_label_free_run(r) for r in results)


def fuzz_row(r: dict) -> tuple:
    statuses = ", ".join(f"{k}×{v}" for k, v in r["by_status"].items())
    text = (f"{r['requests']} requests: {statuses}; **{r['server_errors']} responses ≥ 500, {r['schema_violations']} "
            f"schema violations, {r['undocumented_status']} undocumented status codes**; {r['jobs_started']} "
            f"calibration jobs started, each cancelled")
    return "fuzz (schemathesis, all routes, from `/openapi.json`)", text


def load_row(r: dict) -> tuple:
    statuses = ", ".join(f"{v}×{k}" for k, v in r["by_status"].items())
    clean = " (clean: JSON + `Retry-After`)" if "503" in r["by_status"] and not r["problems"] else ""
    lat = r["latency_s"]
    text = (f"{statuses}{clean}; **{r['identical']}/{r['ok_answers']} outputs identical to a sequential run**; "
            f"p50/p95 total {lat['total']['p50']:.2f}/{lat['total']['p95']:.2f} s, TTFT {lat['ttft']['p50']:.2f}/"
            f"{lat['ttft']['p95']:.2f} s; {len(r['problems'])} problems; "
            f"{'healthy' if r['healthy_after'] else 'unhealthy'} after")
    bench = f"load ({r['clients']} streaming clients × {r['requests_per_client']} requests, queue {r['queue_depth']})"
    return bench, text


def soak_row(r: dict) -> tuple:
    text = (f"{r['model']}: {r['requests']} requests in {r['seconds']:.0f} s, {sum(r['failures'].values())} failures, "
            f"{'healthy' if r['health_after'] == 200 else 'unhealthy'} after; RSS {r['rss_first_mib']:.2f} → "
            f"{r['rss_last_mib']:.2f} MiB after the first {r['every']}; ")
    if r.get("slope_kib_per_request") is not None:
        text += (f"**RSS slope {r['slope_kib_per_request']:+.2f} KiB/request** after the first {r['warmup']} "
                 f"(least squares, {r['samples_fitted']} samples; bound {r['max_slope_kib_per_request']} KiB/request: "
                 f"{verdict(r['slope_pass'])})")
    else:  # an older run, judged by its growth against one KV cache
        text += (f"growth {r['growth_kib']:+.0f} KiB < {r['kv_longest_kib']:.0f} KiB, the KV cache of the longest "
                 f"request ({r['longest_tokens']} tokens), the criterion then; its RSS slope was not recorded")
    return (f"soak ({r['requests']} sequential requests: JSON, stream, `/score`)",
            text + f"; MLX active memory {r['mlx_active_growth_kib']:+.0f} KiB")


ROWS = {"fuzz": fuzz_row, "load": load_row, "soak": soak_row}


def robustness(results: list) -> str:
    rows = ["| bench | command | result | verdict |", "|---|---|---|---|"]
    for r in results:
        bench, text = ROWS[r["bench"]](r)
        rows.append(f"| {bench} | {provenance(r)} | {text} | {'OK' if r['ok'] else 'FAIL'} |")
    return "\n".join(rows) + "\n"


def response_log(results: list) -> str:
    """One row per store of bench/log_overhead.py, one per run of bench/log_durability.py."""
    rows = ["| bench | result | verdict |", "|---|---|---|"]
    for r in results:
        if r["bench"] == "log_overhead":
            blocks = f" of {r['blocks_per_round']} mirrored blocks" if "blocks_per_round" in r else ""
            for store, figs in r["ratios"].items():
                shown = "; ".join(describe(figs[k]) for k in ("tok_s", "p95", "cpu_per_token") if k in figs)
                rows.append(f"| log in {store} vs off ({r['clients']} clients × {r['requests_per_client']} requests "
                            f"× {r['rounds']} rounds{blocks}, {r['model']}) | {shown} | "
                            f"{verdict(figs['tok_s']['pass'] and figs['p95']['pass'])} |")
        else:
            for store, run in r["stores"].items():
                rows.append(f"| kill -9 mid-run, restart, log in {store} ({r['clients']} clients, {r['model']}) | "
                            f"{run['entries_lost']} of {run['requests_answered']} answered responses lost (bound: "
                            f"the writer queue, {r['queue_bound']}); store intact: {run['integrity']}; healthy after "
                            f"restart: {run['healthy_after_restart']} | {verdict(run['ok'])} |")
    return "\n".join(rows) + "\n\n" + "".join(f"Command: {provenance(r)}.\n" for r in results)


def memory_line(m: dict) -> str:
    """The memory of both servers at the last client count, beside the weights and the KV caches."""
    before, peak = m["rss_before_mb"], m["peak_rss_mb"]
    return (f"peak RSS at {m['peak_rss_clients']} clients " + ", ".join(
        f"{s} {peak[s]:.0f} MB ({before[s]:.0f} MB before)" for s in ("halluwatch", "mlx_lm.server"))
        + f"; weights {m['weights_mb']:.0f} MB + KV caches of a full batch's tokens {m['kv_batch_mb']:.1f} MB; "
          f"halluwatch's KV caches at most {m['kv_peak_mb']:.1f} MB as allocated (running batch) and "
          f"{m['prompt_cache_peak_mb']:.1f} MB (prompt cache), read from its /metrics every {m['watch_s']} s")


def concurrency(results: list) -> str:
    (r,) = results
    rows = ["| model | clients | halluwatch tok/s | mlx_lm.server tok/s | ratio | p50 / p95 halluwatch | "
            "p50 / p95 mlx_lm.server | halluwatch answers | equal to sequential | goals |",
            "|---|---|---|---|---|---|---|---|---|---|"]

    def seconds(s: dict) -> str:
        return "–" if s["p50_s"] is None else f"{s['p50_s']:.2f} / {s['p95_s']:.2f} s"

    for m in r["results"]:
        for level in m["levels"]:
            hw, ml = level["halluwatch"], level["mlx_lm.server"]
            ratio = "–" if level["tok_s_ratio"] is None else f"{level['tok_s_ratio']:.2f}"
            if len(level.get("rounds", ())) > 1:
                each = [one["tok_s_ratio"] for one in level["rounds"]]
                ratio += f" (median of {len(each)} rounds: {', '.join('–' if x is None else f'{x:.2f}' for x in each)})"
            statuses = ", ".join(f"{n}×{s}" for s, n in hw["by_status"].items())
            goals = "; ".join(f"{g}: {verdict(ok)}" for g, ok in level["goals"].items())
            rows.append(f"| {m['model']} | {level['clients']} | {hw['tok_s']:.1f} | {ml['tok_s']:.1f} | {ratio} "
                        f"| {seconds(hw)} | {seconds(ml)} | {statuses} | {hw['equal_to_sequential']}/"
                        f"{hw['ok_answers']} | {goals} |")
    memory = "".join(f"- {m['model']}: {memory_line(m)}\n" for m in r["results"])
    return "\n".join(rows) + "\n\n" + memory + f"\nCommand: {provenance(r)}; {r['machine']}.\n"


def memory_parts_line(peak_mb: float, parts: dict) -> str:
    """One line: a burst's peak RSS against what MLX holds at its peak."""
    return (f"burst peak {peak_mb:.0f} MB RSS; MLX in use at most {parts['mlx_active']:.0f} MB (weights "
            f"{parts['weights']:.0f}, KV caches of the running batch {parts['kv']:.0f} and of the prompt cache "
            f"{parts['prompt_cache']:.0f} at most), MLX buffer cache at most {parts['mlx_cache']:.0f} MB; outside "
            f"MLX about {peak_mb - parts['mlx_active'] - parts['mlx_cache']:.0f} MB")


def idle_memory(results: list) -> str:
    rows = ["| model | arm | RSS before the first burst | peak of a burst | idle after a burst | released ÷ kept |",
            "|---|---|---|---|---|---|"]
    for r in results:
        ratios = r["ratios"]
        for arm, s in r["summary"].items():
            ratio = f"peak {ratios['peak_mb']:.3f}, idle {ratios['idle_mb']:.3f}" if arm == "released" else ""
            rows.append(f"| {r['model']} | {arm} | {s['start_mb']:.0f} MB | {s['peak_mb']:.0f} MB "
                        f"| {s['idle_mb']:.0f} MB | {ratio} |")
    runs = "".join(f"Command: {provenance(r)}; {r['machine']}; {len(r['runs']['kept'])} runs per arm.\n"
                   for r in results)
    parts = "".join(f"- {r['model']}, {arm}: {memory_parts_line(s['peak_mb'], s['parts_mb'])}\n"
                    for r in results for arm, s in r["summary"].items() if "parts_mb" in s)
    return "\n".join(rows) + "\n\nMedians over the bursts after the first.\n\n" + parts + "\n" * bool(parts) + runs


KINDS = {"overhead": overhead, "calibration-speed": calibration_speed, "label-free": label_free,
         "robustness": robustness, "response-log": response_log, "concurrency": concurrency,
         "idle-memory": idle_memory}


def render(doc: str) -> str:
    """`doc` (the text of docs/results.md) with every bench table rebuilt from its result files."""
    def rebuilt(m: re.Match) -> str:
        if m["kind"] not in KINDS:
            raise SystemExit(f"unknown bench table {m['kind']!r} (known: {', '.join(KINDS)})")
        results = [json.loads((REPO / f).read_text()) for f in m["files"].split()]
        return m["open"] + KINDS[m["kind"]](results) + m["close"]

    return BLOCK.sub(rebuilt, doc)


def update(path: Path, render_fn, check: bool, what: str, command: str) -> None:
    """Rewrite the generated tables of `path` with `render_fn`, or with `check` exit 1 when they
    differ (`what`: the tables, for the messages; `command`: what rewrites them)."""
    text = path.read_text()
    new = render_fn(text)
    if check:
        if new != text:
            sys.exit(f"{path}: {what} out of date (they differ from their sources): run {command}")
        print(f"{path}: {what} up to date")
    elif new != text:
        path.write_text(new)
        print(f"rewrote the {what} in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a table differs from its result files")
    parser.add_argument("--doc", default=str(DOC),
                        help="the Markdown file holding the tables (default: docs/results.md)")
    args = parser.parse_args()
    update(Path(args.doc), render, args.check, "bench tables", "python bench/tables.py")


if __name__ == "__main__":
    main()
