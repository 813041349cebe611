"""Seconds per calibration sample on HaluEval QA judgment prompts with the default model.

On the same samples, interleaved group by group:
  (a) the prototype's method: the whole prefix recomputed at every token, no KV cache;
  (b) plain `mlx_lm.stream_generate` of the same prompts (the floor of one-at-a-time scoring);
  (c) halluwatch one at a time (KV cache, all signals; the path of /generate);
  (d) halluwatch batched (per-prompt prefill, batched decode).
(a), (b) and (c) are timed sample by sample, one after the other on each sample ((a) on the first
`--proto` samples of each group only, it is slow); (d) is timed batch by batch (one batch per group)
and its seconds per sample are the batch's seconds ÷ its size. Ratios are paired: (c)/(b) and
(a)/(c) per sample, the throughput (d)/(c) per group (the group's one-at-a-time seconds ÷ its
batch's seconds); each is reported as the median with its range and IQR.
Goals: (c)/(b) ≤ 1.05; throughput (d)/(c) ≥ 2. Prints all rates, ratios and PASS/FAIL per goal.

    python bench/calibration_speed.py [--groups 2] [--batch 8] [--proto 3] [--json PATH]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO / "bench", REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import adapters  # noqa: E402,F401  (preloads OpenBLAS before mlx)
import mlx.core as mx  # noqa: E402
from mlx_lm import stream_generate  # noqa: E402

from adapters.loader import load  # noqa: E402
from app.calibration.scoring import RunSpec, score_batch  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.calibration.halueval import load_samples  # noqa: E402
from benchlib import add_json_option, describe, exit_now, judge, machine, spread, write_json  # noqa: E402
from signals.step import step_signals  # noqa: E402

MAX_TOKENS = 20


def prototype(lm, ids: list) -> int:
    """Greedy with signals, recomputing the whole prefix at every step (no cache)."""
    tokens, prev = [], None
    for _ in range(MAX_TOKENS):
        logits = lm.model(mx.array(ids + tokens)[None])[:, -1, :]
        hidden = lm.taps.stacked()
        token = mx.argmax(logits, axis=-1)
        x = logits.astype(mx.float32)
        values = step_signals(x - mx.logsumexp(x, axis=-1, keepdims=True), hidden, token, prev, 2.0, 5.0)
        prev = hidden[:, -1, :]
        mx.eval(token, values, prev)
        tokens.append(token.item())
        if tokens[-1] in lm.stop_ids:
            break
    return len(tokens)


def plain(lm, ids: list) -> int:
    return sum(1 for _ in stream_generate(lm.model, lm.tokenizer, ids, max_tokens=MAX_TOKENS))


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


NAMES = {"a": "prototype: whole prefix recomputed at every token, no KV cache",
         "b": "plain `mlx_lm.stream_generate` (the floor of one-at-a-time)",
         "c": "halluwatch, one at a time, all signals", "d": "halluwatch, batches of {batch}"}


def summary(rows: list, batches: list, batch: int) -> dict:
    """Seconds per sample of each method and the paired ratios. (a), (b) and (c) are timed sample by
    sample, (a) on the first --proto samples of each group only; (d) batch by batch, so its
    seconds per sample are batch seconds ÷ batch size, once per batch."""
    def mean_of(k: str, values: list) -> dict:
        mean = statistics.mean(values)
        return {"name": NAMES[k], "s_per_sample": mean, "samples_per_s": 1 / mean, "n": len(values)}

    methods = {k: mean_of(k, [r[k] for r in rows if k in r]) for k in "abc" if any(k in r for r in rows)}
    n_d, secs_d = sum(b["size"] for b in batches), sum(b["seconds"] for b in batches)
    methods["d"] = {"name": NAMES["d"].format(batch=batch), "s_per_sample": secs_d / n_d, "samples_per_s": n_d / secs_d,
                    "n": n_d, "batches": len(batches), "s_per_batch": secs_d / len(batches)}
    c_of_group = {g: sum(r["c"] for r in rows if r["group"] == g) for g in {r["group"] for r in rows}}
    per_sample = "median of per-sample ratios"
    ratios = [
        judge(spread([r["c"] / r["b"] for r in rows], per_sample), "(c)/(b)", ("≤", 1.05)),
        judge(spread([c_of_group[b["group"]] / b["seconds"] for b in batches],
                     "median of per-group ratios: a group's one-at-a-time seconds ÷ its batch's seconds"),
              "throughput (d)/(c)", ("≥", 2)),
    ]
    if "a" in methods:  # not with --proto 0
        ratios.append(judge(spread([r["a"] / r["c"] for r in rows if "a" in r], per_sample), "(a)/(c)"))
    return {"methods": methods, "ratios": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=2, help="groups of --batch samples")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--proto", type=int, default=3, help="samples per group timed with the slow method (a)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    engine = Engine("default")
    engine.start()
    ref = load("default")  # a second copy on this thread for (a) and (b)
    samples, _ = load_samples("qa", "test", 2 * args.groups * args.batch, seed=42)
    # in calibration order: each item's right and hallucinated samples side by side (shared prefix)
    one, batched = RunSpec("default", max_tokens=MAX_TOKENS), RunSpec("default", max_tokens=MAX_TOKENS,
                                                                     batch_size=args.batch)
    score_batch(engine, samples[:2], batched), plain(ref, ref.tokenizer.encode(samples[0].prompt))  # warm-up
    rows, batches = [], []  # one row per sample: {"group", "b", "c"[, "a"]}; one entry per batch
    for g in range(1, args.groups + 1):
        group = samples[(g - 1) * args.batch:g * args.batch]
        for j, s in enumerate(group):
            ids = ref.tokenizer.encode(s.prompt)
            rows.append({"group": g, "b": timed(plain, ref, ids), "c": timed(score_batch, engine, [s], one)})
            if j < args.proto:  # the same sample, with the prototype's method
                rows[-1]["a"] = timed(prototype, ref, ids)
        t = timed(score_batch, engine, group, batched)
        batches.append({"group": g, "size": len(group), "seconds": t, "s_per_sample": t / len(group)})
        mine = [r for r in rows if r["group"] == g]
        print(f"group {g}: " + ", ".join(f"({k}) {statistics.mean(r[k] for r in mine if k in r):.2f} s/sample"
                                         for k in "abc" if any(k in r for r in mine))
              + f", (d) a batch of {len(group)} in {t:.2f} s = {t / len(group):.2f} s/sample", flush=True)
    engine.stop()
    result = summary(rows, batches, args.batch)
    print(f"\n{ref.model_id} ({ref.dtype}, BLAS {ref.blas}), HaluEval QA judgment prompts, max_tokens {MAX_TOKENS}; "
          f"{machine()}")
    for k, m in result["methods"].items():
        timed_on = (f"{m['n']} samples in {m['batches']} batch(es), {m['s_per_batch']:.2f} s/batch" if k == "d"
                    else f"{m['n']} samples")
        print(f"  ({k}) {m['name']:<62} {m['s_per_sample']:6.2f} s/sample  {m['samples_per_s']:6.3f} samples/s  "
              f"({timed_on})")
    for ratio in result["ratios"]:
        print(describe(ratio))
    write_json(args.json, "calibration_speed", {
        "model": ref.model_id, "dtype": ref.dtype, "blas": ref.blas, "max_tokens": MAX_TOKENS,
        "batch": args.batch, "groups": args.groups, "proto": args.proto, **result, "samples": rows, "batches": batches},
        argv)
    return 0


if __name__ == "__main__":
    exit_now(main())
