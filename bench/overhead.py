"""Decode speed of the engine with all signals ÷ plain `mlx_lm.stream_generate` (goal ≥ 0.97).

Same model file and prompt. Each run's decode rate is (tokens − 1) / (time of last token − time
of first token). The two arms run in `--runs` pairs whose order alternates (plain then ours, ours
then plain, …: A B B A A B …), so that a drift of the machine's speed favours neither; each pair
gives a ratio ours ÷ plain. Prints every pair, the median rates, the median of the per-pair ratios
with its range and IQR, and PASS or FAIL against `--goal`. The exit status is 0 either way, unless
`--strict` (then 1 on FAIL).

    python bench/overhead.py [--model default] [--runs 7] [--max-tokens 128] [--probe] [--goal 0.97]
                             [--strict] [--json PATH]

With --probe the engine also applies the probe of the model's calibrated params (calibrated_params/).
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
from mlx_lm import stream_generate  # noqa: E402

from adapters.loader import load  # noqa: E402
from app.engine import Engine, GenerationJob, StepRecord  # noqa: E402
from app.prompts import encode_prompt  # noqa: E402
from benchlib import add_json_option, describe, exit_now, judge, machine, spread, write_json  # noqa: E402

PROMPT = "Tell me a long story about a dragon who learns to cook, with many details."


def decode_rate(stamps: list) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def plain_run(lm, ids, max_tokens) -> tuple:
    stamps = []
    for _ in stream_generate(lm.model, lm.tokenizer, ids, max_tokens=max_tokens):
        stamps.append(time.perf_counter())
    return decode_rate(stamps), len(stamps)


def engine_run(engine, ids, max_tokens, probe=None) -> tuple:
    handle = engine.submit(GenerationJob(ids, max_tokens, probes=(probe,) if probe else ()))
    stamps = []
    emit = handle.emit

    def stamped(item):  # the time each step reaches the caller's side
        if isinstance(item, StepRecord):
            stamps.append(time.perf_counter())
        emit(item)

    handle.emit = stamped
    handle.wait()
    return decode_rate(stamps), len(stamps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--runs", type=int, default=7, help="pairs of runs (one plain, one halluwatch)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--probe", action="store_true", help="also apply the calibrated params' probe")
    ap.add_argument("--goal", type=float, default=0.97, help="PASS when the median ratio is at least this")
    ap.add_argument("--strict", action="store_true", help="exit status 1 on FAIL (default: 0 either way)")
    add_json_option(ap)
    args = ap.parse_args(argv)

    engine = Engine(args.model, precision=args.precision)
    lm_ours = engine.start()
    plain = load(args.model, args.precision, with_taps=False)  # a separate copy, on this thread
    ids = encode_prompt(plain, PROMPT, None, True, args.max_tokens)
    probe = None
    if args.probe:
        from app.calibration.params import find_params

        params = find_params(lm_ours.model_id, REPO / "calibrated_params")
        if params is None or params.probe is None:
            sys.exit(f"no calibrated params with a probe for {lm_ours.model_id}")
        probe = params.probe
    arms = {"plain": lambda: plain_run(plain, ids, args.max_tokens),
            "ours": lambda: engine_run(engine, ids, args.max_tokens, probe)}

    plain_run(plain, ids, 8), engine_run(engine, ids, 8)  # warm-up
    pairs = []
    for i in range(args.runs):
        order = ("plain", "ours") if i % 2 == 0 else ("ours", "plain")  # ABBA: A B, B A, A B, …
        pair = {"order": " then ".join(order)}
        for arm in order:
            pair[arm], pair[f"{arm}_tokens"] = arms[arm]()
        pair["ratio"] = pair["ours"] / pair["plain"]
        pairs.append(pair)
        print(f"pair {i + 1} ({pair['order']}): plain {pair['plain']:.2f} tok/s ({pair['plain_tokens']} tokens), "
              f"ours {pair['ours']:.2f} tok/s ({pair['ours_tokens']} tokens), ratio {pair['ratio']:.3f}", flush=True)
    engine.stop()
    med = {arm: statistics.median(p[arm] for p in pairs) for arm in arms}
    ratio = judge(spread([p["ratio"] for p in pairs], "median of per-pair ratios"), "ratio ours/plain",
                  ("≥", args.goal))
    print(f"\nmodel {lm_ours.model_id} ({lm_ours.dtype}, BLAS {lm_ours.blas}), prompt {len(ids)} tokens; {machine()}")
    print(f"median decode: plain mlx_lm.stream_generate {med['plain']:.2f} tok/s, "
          f"halluwatch engine with all signals{' and the probe' if probe else ''} {med['ours']:.2f} tok/s")
    print(describe(ratio))
    write_json(args.json, "overhead", {
        "model": lm_ours.model_id, "dtype": lm_ours.dtype, "blas": lm_ours.blas, "prompt_tokens": len(ids),
        "max_tokens": args.max_tokens, "probe": bool(probe), "plain_tok_s": med["plain"], "ours_tok_s": med["ours"],
        "ratio": ratio, "pairs": pairs}, argv)
    return 1 if args.strict and not ratio["pass"] else 0


if __name__ == "__main__":
    exit_now(main())
