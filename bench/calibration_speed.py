"""Seconds per calibration sample on HaluEval QA judgment prompts with the default model.

On the same samples, interleaved group by group:
  (a) the prototype's method: the whole prefix recomputed at every token, no KV cache;
  (b) plain `mlx_lm.stream_generate` of the same prompts (the floor of one-at-a-time scoring);
  (c) halluwatch one at a time (KV cache, all signals; the path of /generate);
  (d) halluwatch batched (per-prompt prefill, batched decode).
Goals: (c) ≤ 1.05 × (b); throughput of (d) ≥ 2 × (c). Prints all rates and ratios.

    python bench/calibration_speed.py [--groups 2] [--batch 8] [--proto 3]
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adapters  # noqa: E402,F401  (preloads OpenBLAS before mlx)
import mlx.core as mx  # noqa: E402
from mlx_lm import stream_generate  # noqa: E402

from adapters.loader import load  # noqa: E402
from app.calibration.scoring import RunSpec, score_batch  # noqa: E402
from app.engine import Engine  # noqa: E402
from app.calibration.halueval import load_samples  # noqa: E402
from signals.step import step_signals  # noqa: E402

MAX_TOKENS = 20


def prototype(lm, ids: list) -> int:
    """Greedy with signals, recomputing the whole prefix at every step (no cache)."""
    tokens, prev = [], None
    for _ in range(MAX_TOKENS):
        logits = lm.model(mx.array(ids + tokens)[None])[:, -1, :]
        hidden = lm.taps.stacked()
        token = mx.argmax(logits, axis=-1)
        values = step_signals(logits, hidden, token, prev, 2.0, 5.0)
        prev = hidden[:, -1, :]
        mx.eval(token, values, prev)
        tokens.append(token.item())
        if tokens[-1] in lm.stop_ids:
            break
    return len(tokens)


def plain(lm, ids: list) -> int:
    return sum(1 for _ in stream_generate(lm.model, lm.tokenizer, ids, max_tokens=MAX_TOKENS))


def timed(fn, *args) -> tuple:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=2, help="groups of --batch samples")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--proto", type=int, default=3, help="samples per group timed with the slow method (a)")
    args = ap.parse_args()

    engine = Engine("default")
    engine.start()
    ref = load("default")  # a second copy on this thread for (a) and (b)
    samples, _ = load_samples("qa", "test", 2 * args.groups * args.batch, seed=42)
    # in calibration order: each item's right and hallucinated samples side by side (shared prefix)
    one, batched = RunSpec("default", max_tokens=MAX_TOKENS), RunSpec("default", max_tokens=MAX_TOKENS,
                                                                     batch_size=args.batch)
    secs = {k: [] for k in "abcd"}
    score_batch(engine, samples[:2], batched), plain(ref, ref.tokenizer.encode(samples[0].prompt))  # warm-up
    for g in range(args.groups):
        group = samples[g * args.batch:(g + 1) * args.batch]
        for s in group:
            ids = ref.tokenizer.encode(s.prompt)
            secs["b"].append(timed(plain, ref, ids)[0])
            secs["c"].append(timed(score_batch, engine, [s], one)[0])
        t, _ = timed(score_batch, engine, group, batched)
        secs["d"] += [t / len(group)] * len(group)
        for s in group[:args.proto]:
            secs["a"].append(timed(prototype, ref, ref.tokenizer.encode(s.prompt))[0])
        print(f"group {g + 1}: " + ", ".join(f"{k} {statistics.mean(v):.2f} s" for k, v in secs.items()), flush=True)
    engine.stop()
    mean = {k: statistics.mean(v) for k, v in secs.items()}
    print(f"\nSmolLM2-135M ({ref.dtype}, BLAS {ref.blas}), HaluEval QA judgment prompts, max_tokens {MAX_TOKENS}; "
          f"{platform.machine()} {platform.system()}, {__import__('os').cpu_count()} cores")
    names = {"a": "prototype (no KV cache)", "b": "plain mlx_lm", "c": "halluwatch, one at a time",
             "d": f"halluwatch, batch {args.batch}"}
    for k in "abcd":
        print(f"  ({k}) {names[k]:<28} {mean[k]:6.2f} s/sample  {1 / mean[k]:6.3f} samples/s  (n={len(secs[k])})")
    print(f"(c)/(b) = {mean['c'] / mean['b']:.3f} (goal ≤ 1.05); "
          f"throughput (d)/(c) = {mean['c'] / mean['d']:.2f}× (goal ≥ 2); (a)/(c) = {mean['a'] / mean['c']:.1f}×")


if __name__ == "__main__":
    main()
