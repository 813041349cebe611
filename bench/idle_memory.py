"""Memory handed back when the engine goes idle: resident memory after bursts of requests, with and
without the idle release (`adapters/memory.py`), side by side in one run.

Each arm is a fresh process (RSS is the process's) running the engine in process on a bench model
of bench/concurrency.py (`embedded` by default). It sends `--bursts` bursts of `--clients` chat
requests submitted at once (greedy, `--max-tokens` each, distinct prompts), waits for all of them,
then lets the engine idle for `--gap` seconds (longer than its idle delay, `IDLE_RELEASE_S`). It
samples its RSS every 10 ms: the peak during each burst, and the RSS at the end of each gap. The arm
`kept` replaces the release with nothing; `released` is the engine as it is. Arms alternate
(released, kept, kept, released, …: benchlib's `round_orders`) for `--runs` pairs. Printed per
arm: the medians over runs of the RSS before the first burst, of the peak of the bursts after the
first (the first fills the allocators) and of the idle RSS after them; then the ratios released ÷
kept. Then what a burst's peak is made of (medians of the bursts' peaks, each read on its own): MLX's
memory in use (`mx.get_active_memory`: the weights, taken before the first burst, the running
batch's KV caches and the prompt cache's, as the engine counts them, and the step's temporaries)
and in its buffer cache (`mx.get_cache_memory`); the rest of the RSS is outside MLX (the
interpreter, the libraries, Python objects).

    python bench/idle_memory.py [--model embedded|bench8] [--runs 2] [--bursts 4] [--clients 32]
                                [--max-tokens 32] [--gap 1.5] [--prompt-cache-mb 512] [--json PATH]
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "bench", REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (first: preloads OpenBLAS before mlx)
from benchlib import add_json_option, exit_now, round_orders, write_json  # noqa: E402
from concurrency import PROMPTS, bench_model, rss_mb  # noqa: E402
from tables import memory_parts_line  # noqa: E402

ARMS = ("released", "kept")
PARTS = ("mlx_active", "mlx_cache", "kv", "prompt_cache")  # sampled beside the RSS during a burst, MB


def rss() -> float:
    """This process's resident set, MB."""
    return rss_mb("self", "VmRSS")


def run_arm(args) -> dict:
    """One arm in this process: {"start": MB, "peaks": [MB per burst], "idle": [MB per gap]}."""
    import mlx.core as mx

    from app.engine import Engine, GenerationJob, core
    from app.settings import Settings

    if args.arm == "kept":
        core.release_memory = lambda: None
    peak = dict.fromkeys(("rss", *PARTS), 0.0)

    def watch():
        while True:
            now = {"rss": rss(), "mlx_active": mx.get_active_memory() / 2**20,
                   "mlx_cache": mx.get_cache_memory() / 2**20, "kv": engine.kv_cache_bytes / 2**20,
                   "prompt_cache": engine.prompt_cache_bytes / 2**20}
            for k, v in now.items():
                peak[k] = max(peak[k], v)
            time.sleep(0.01)

    engine = Engine(str(bench_model(args.model, Settings().home)), precision="native",
                    prompt_cache_mb=args.prompt_cache_mb, queue_depth=args.clients, max_batch_size=args.clients)
    tokenizer = engine.start().tokenizer
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}],
                                             add_generation_prompt=True) for i in range(args.clients)]
    out = {"start": rss(), "weights": mx.get_active_memory() / 2**20, "peaks": [], "idle": [],
           "parts": {k: [] for k in PARTS}}
    threading.Thread(target=watch, daemon=True).start()
    for _ in range(args.bursts):
        peak.update(dict.fromkeys(peak, 0.0))
        handles = [engine.submit(GenerationJob(prompt_ids=list(p), max_tokens=args.max_tokens)) for p in prompts]
        for h in handles:
            h.wait()
        out["peaks"].append(peak["rss"])
        for k, values in out["parts"].items():
            values.append(peak[k])
        time.sleep(args.gap)
        out["idle"].append(rss())
    engine.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded", choices=("embedded", "bench8"))
    ap.add_argument("--runs", type=int, default=2, help="pairs of arms, order alternating")
    ap.add_argument("--bursts", type=int, default=4)
    ap.add_argument("--clients", type=int, default=32, help="requests per burst, submitted at once")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--gap", type=float, default=1.5, help="seconds idle after each burst")
    ap.add_argument("--prompt-cache-mb", type=float, default=512)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # a child process: run one arm
    add_json_option(ap)
    args = ap.parse_args()
    if args.bursts < 2:
        ap.error("--bursts must be at least 2 (the first burst fills the allocators)")
    if args.arm:
        print(json.dumps(run_arm(args)))
        exit_now(0)

    child = [sys.executable, __file__, "--model", args.model, "--bursts", str(args.bursts), "--clients",
             str(args.clients), "--max-tokens", str(args.max_tokens), "--gap", str(args.gap),
             "--prompt-cache-mb", str(args.prompt_cache_mb)]
    runs = {arm: [] for arm in ARMS}
    orders = round_orders(list(ARMS))
    for i in range(args.runs):
        for arm in orders[i % len(orders)]:
            done = subprocess.run(child + ["--arm", arm], capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[arm].append(result)
            print(f"run {i + 1} {arm:8s}: start {result['start']:.0f} MB, burst peaks "
                  + " ".join(f"{p:.0f}" for p in result["peaks"]) + " MB, idle "
                  + " ".join(f"{p:.0f}" for p in result["idle"]) + " MB", flush=True)
    summary = {arm: {"start_mb": statistics.median(r["start"] for r in rs),
                     "peak_mb": statistics.median(p for r in rs for p in r["peaks"][1:]),
                     "idle_mb": statistics.median(p for r in rs for p in r["idle"][1:])} for arm, rs in runs.items()}
    print(f"\n{'arm':10s} {'RSS before':>11s} {'burst peak':>11s} {'idle after':>11s}  (MB, medians)")
    for arm, s in summary.items():
        print(f"{arm:10s} {s['start_mb']:11.0f} {s['peak_mb']:11.0f} {s['idle_mb']:11.0f}")
    ratios = {k: summary["released"][k] / summary["kept"][k] for k in ("peak_mb", "idle_mb")}
    print(f"released ÷ kept: burst peak {ratios['peak_mb']:.3f}, idle after {ratios['idle_mb']:.3f}\n")
    for arm, rs in runs.items():
        summary[arm]["parts_mb"] = parts = {"weights": statistics.median(r["weights"] for r in rs)} | {
            k: statistics.median(v for r in rs for v in r["parts"][k][1:]) for k in PARTS}
        print(f"{arm}: {memory_parts_line(summary[arm]['peak_mb'], parts)}")
    if args.json:
        write_json(args.json, "idle_memory", {"model": args.model, "summary": summary, "ratios": ratios,
                                              "runs": runs})
    exit_now(0)


if __name__ == "__main__":
    main()
