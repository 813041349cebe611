"""Decode speed of the engine with all signals ÷ plain `mlx_lm.stream_generate` (goal ≥ 0.97).

Same model file and prompt; the two run interleaved (plain, ours, plain, ours, …) and each run's
decode rate is (tokens − 1) / (time of last token − time of first token). Prints the medians
and their ratio.

    python bench/overhead.py [--model default] [--runs 7] [--max-tokens 128] [--probe]

With --probe the engine also applies the probe of the model's calibrated params (calibrated_params/).
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import adapters  # noqa: E402,F401  (preloads OpenBLAS before mlx)
from mlx_lm import stream_generate  # noqa: E402

from adapters.loader import load  # noqa: E402
from app.engine import Engine, GenerationJob, StepRecord  # noqa: E402
from app.prompts import encode_prompt  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--probe", action="store_true", help="also apply the calibrated params' probe")
    args = ap.parse_args()

    engine = Engine(args.model, precision=args.precision)
    lm_ours = engine.start()
    plain = load(args.model, args.precision, with_taps=False)  # a separate copy, on this thread
    ids = encode_prompt(plain, PROMPT, None, True, args.max_tokens)
    probe = None
    if args.probe:
        from app.calibration.params import find_params

        params = find_params(lm_ours.model_id, Path(__file__).resolve().parent.parent / "calibrated_params")
        if params is None or params.probe is None:
            sys.exit(f"no calibrated params with a probe for {lm_ours.model_id}")
        probe = params.probe

    plain_run(plain, ids, 8), engine_run(engine, ids, 8)  # warm-up
    rows = {"plain": [], "ours": []}
    for i in range(args.runs):
        rows["plain"].append(plain_run(plain, ids, args.max_tokens))
        rows["ours"].append(engine_run(engine, ids, args.max_tokens, probe))
        print(f"run {i + 1}: plain {rows['plain'][-1][0]:.2f} tok/s ({rows['plain'][-1][1]} tokens), "
              f"ours {rows['ours'][-1][0]:.2f} tok/s ({rows['ours'][-1][1]} tokens)", flush=True)
    engine.stop()
    med = {k: statistics.median(r for r, _ in v) for k, v in rows.items()}
    print(f"\nmodel {lm_ours.model_id} ({lm_ours.dtype}, BLAS {lm_ours.blas}), prompt {len(ids)} tokens; "
          f"{platform.machine()} {platform.system()}, {__import__('os').cpu_count()} cores")
    print(f"median decode: plain mlx_lm.stream_generate {med['plain']:.2f} tok/s, "
          f"halluwatch engine with all signals{' and the probe' if probe else ''} {med['ours']:.2f} tok/s")
    print(f"ratio ours/plain = {med['ours'] / med['plain']:.3f} (goal ≥ 0.97)")


if __name__ == "__main__":
    main()
